"""DIN: the activation-weighted history, masks of short and empty histories, pairing of
histories with targets, and refusal of bad input."""

import pytest
import torch
from torch.testing import assert_close

from recemb.features import FeatureSpec, Schema
from recemb.models import DIN, DINConfig, build_model, model_config
from recemb.models.target_attention import masked_softmax, pair_sequences
from recemb.storage import StoreSettings
from recemb.tables import Decoupled, Full, Hashed, build_embedding

SCHEMA = Schema(
    (
        FeatureSpec("user", 10),
        FeatureSpec("item", 30),
        FeatureSpec("cate", 6),
        FeatureSpec("hist_item", 30, "sequence", max_len=4, table="item"),
        FeatureSpec("hist_cate", 6, "sequence", max_len=4, table="cate"),
        FeatureSpec("tags", 5, "multi_hot"),
        FeatureSpec("clicked_tags", 5, "sequence", max_len=3, table="tags_seen"),  # pairs with nothing
    ),
    dense=("price",),
)


def bags(hist_item, hist_cate=None, item=(1, 2, 3)):
    n = len(hist_item)
    return {
        "user": [[1]] * n,
        "item": [[i] for i in item[:n]],
        "cate": [[2]] * n,
        "hist_item": hist_item,
        "hist_cate": hist_cate if hist_cate is not None else [[j % 6 for j in h] for h in hist_item],
        "tags": [[0, 1]] * n,
        "clicked_tags": [[3]] * n,
    }


def din(table=None, **settings):
    torch.manual_seed(0)
    return DIN(build_embedding(SCHEMA, table or Full(dim=8), StoreSettings("reference")), DINConfig(**settings))


def test_histories_pair_with_the_targets_that_share_their_table():
    behaviours, unpaired = pair_sequences(SCHEMA, (), "din")
    assert [(b.histories, b.targets) for b in behaviours] == [(("hist_item", "hist_cate"), ("item", "cate"))]
    assert unpaired == ["clicked_tags"]


@pytest.mark.parametrize("softmax", [False, True])
def test_interest_is_the_activation_weighted_sum_of_present_items(make_kjt, softmax):
    model = din(softmax=softmax)
    kjt = make_kjt(bags([[1, 2, 3], [4], []]))
    emb = model.embedding(kjt)
    target, history, mask = model.behaviour(emb, model.behaviours[0])
    assert history.shape == (3, 4, 16) and target.shape == (3, 16)  # item and category concatenated
    assert mask.tolist() == [[True, True, True, False], [True, False, False, False], [False] * 4]
    got = model.interest(target, history, mask, model.units[0])
    scores = model.units[0](target, history)
    for b in range(3):
        n = int(mask[b].sum())
        w = torch.softmax(scores[b, :n], 0) if softmax else scores[b, :n]
        assert_close(got[b], (w.unsqueeze(1) * history[b, :n]).sum(0))
    assert not got[2].any()  # an empty history gives zeros


def test_empty_histories_give_finite_logits_and_gradients(make_kjt):
    model = din(softmax=True)
    logits = model(make_kjt(bags([[], [], []])), torch.ones(3, 1))
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.dense_parameters() if p.grad is not None)
    assert not torch.isnan(masked_softmax(torch.randn(2, 4), torch.zeros(2, 4, dtype=torch.bool))).any()


def test_a_sample_does_not_depend_on_the_rest_of_its_batch(make_kjt):
    model = din()
    with torch.no_grad():
        alone = model(make_kjt(bags([[5, 6]])), torch.ones(1, 1))
        together = model(make_kjt(bags([[5, 6], [7, 8, 9, 1], []])), torch.ones(3, 1))
    assert_close(alone, together[:1])


@pytest.mark.parametrize(
    "table", [Full(dim=8), Hashed(dim=8, buckets=16), Decoupled(attention="full:dim=4", representation="full:dim=8")]
)
def test_every_kind_trains(make_kjt, table):
    model = din(table)
    kjt = make_kjt(bags([[1, 2, 3], [4], []]))
    before = model.embedding.store.table_weights()
    model(kjt, torch.ones(3, 1)).sum().backward()
    after = model.embedding.store.table_weights()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_histories_of_one_behaviour_must_be_aligned(make_kjt):
    model = din()
    with pytest.raises(ValueError, match=r"same length in every sample; 'hist_cate' differs"):
        model(make_kjt(bags([[1, 2], [3]], hist_cate=[[1], [3]])), torch.ones(2, 1))


def test_target_ids_outside_the_table_are_refused(make_kjt):
    with pytest.raises(IndexError, match=r"feature 'item': id 30 is outside \[0, 30\)"):
        din()(make_kjt(bags([[1], [2]], item=(30, 1))), torch.ones(2, 1))
    # a hashing kind maps any id to a row, as it states
    hashed = din(Hashed(dim=8, buckets=16))
    assert torch.isfinite(hashed(make_kjt(bags([[1], [2]], item=(10**9, 1))), torch.ones(2, 1))).all()


def test_mismatched_pairs_are_refused():
    embedding = build_embedding(SCHEMA, Full(dim=8), StoreSettings("reference"))
    cases = {
        ("hist_item=cate",): "history 'hist_item' reads table 'item' but target 'cate' reads 'cate'",
        ("hist_item=itme",): r"unknown feature 'itme'",
        ("item=hist_item",): "'item' is 'single', not a sequence",
        ("hist_item=hist_cate",): "is a sequence",
        ("hist_item",): "look like 'history=target'",
    }
    for pairs, match in cases.items():
        with pytest.raises(ValueError, match=match):
            DIN(embedding, DINConfig(pairs=pairs))


def test_a_schema_without_a_pair_is_refused():
    schema = Schema((FeatureSpec("item", 5), FeatureSpec("hist", 7, "sequence", max_len=2)))
    embedding = build_embedding(schema, Full(dim=8), StoreSettings("reference"))
    with pytest.raises(ValueError, match=r"din needs a history paired with a target.*hist \(table 'hist'\)"):
        build_model(embedding, model_config("din"))
    ambiguous = Schema(
        (FeatureSpec("a", 5), FeatureSpec("b", 5, table="a"), FeatureSpec("h", 5, "sequence", max_len=2, table="a"))
    )
    embedding = build_embedding(ambiguous, Full(dim=8), StoreSettings("reference"))
    with pytest.raises(ValueError, match=r"several pooled features \['a', 'b'\]; name its target with pairs"):
        DIN(embedding)
    DIN(embedding, DINConfig(pairs=("h=b",)))  # named, it is fine


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match=r"DINConfig.hidden widths must be >= 1"):
        DINConfig(hidden=(0,))
