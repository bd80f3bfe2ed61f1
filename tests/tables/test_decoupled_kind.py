"""The decoupled kind: two views from separate parameters in one store, separate gradients,
any two inner kinds, and its settings string."""

import pytest
import torch
from torch.testing import assert_close

from recemb.features import FeatureSpec, Schema
from recemb.storage import EmbeddingOptimizer, StoreSettings
from recemb.tables import Decoupled, Full, Hashed, build_embedding, parse_table, table_from_mapping
from recemb.tables.base import StoreView

SCHEMA = Schema(
    (
        FeatureSpec("user", 10),
        FeatureSpec("item", 30),
        FeatureSpec("hist", 30, "sequence", max_len=3, table="item"),
    )
)
BAGS = {"user": [[1], [2], [3]], "item": [[4], [5], [29]], "hist": [[4, 5], [], [7, 8, 9]]}


def build(cfg, backend="reference", opt="sgd"):
    return build_embedding(SCHEMA, cfg, StoreSettings(backend, EmbeddingOptimizer(opt, lr=0.5)))


def test_both_views_come_from_separate_tables_of_one_store(make_kjt):
    module = build(Decoupled(attention="full:dim=8", representation="full:dim=16"))
    assert isinstance(module.parts["attention"].store, StoreView)  # the inner kinds own no tables
    names = [t.name for t in module.store.layout.tables]
    assert names == ["att/user", "att/item", "rep/user", "rep/item"]
    assert module.dim == 16 and module.attention_dim == 8
    weights = module.store.table_weights()
    rep = module(make_kjt(BAGS))
    att = module(make_kjt(BAGS), view="attention")
    assert rep.attention is not None
    assert_close(att.pooled, rep.attention.pooled)
    assert att.pooled.shape == (3, 2, 8) and rep.pooled.shape == (3, 2, 16)
    assert_close(rep.pooled[:, 1], weights["rep/item"][[4, 5, 29]])
    assert_close(att.pooled[:, 1], weights["att/item"][[4, 5, 29]])
    padded, mask = att.sequences["hist"]  # the history reads the target's (attention) table
    assert padded.shape == (3, 3, 8)
    assert mask.tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    assert_close(padded[2], weights["att/item"][[7, 8, 9]])
    assert not padded[1].any()


@pytest.mark.parametrize("view, changed", [("attention", "att/"), ("representation", "rep/")])
def test_each_view_gets_its_own_gradients(view, changed, make_kjt):
    module = build(Decoupled(attention="full:dim=8", representation="full:dim=16"))
    before = module.store.table_weights()
    out = module(make_kjt(BAGS), view=view)
    (out.pooled.sum() + out.sequences["hist"][0].sum()).backward()
    after = module.store.table_weights()
    for name, w in after.items():
        moved = not torch.equal(w, before[name])
        assert moved == name.startswith(changed), f"{name} moved={moved} after a loss on the {view} view"


def test_default_views_are_different_parameters_of_equal_width(make_kjt):
    module = build(Decoupled())
    rep = module(make_kjt(BAGS))
    assert rep.pooled.shape == rep.attention.pooled.shape
    assert not torch.equal(rep.pooled, rep.attention.pooled)


def test_hashed_attention_and_full_representation_fused_equals_reference(make_kjt, trainable):
    cfg = Decoupled(attention="hashed:dim=8;buckets=7", representation="full:dim=16")
    tbe, ref = build(cfg, "tbe", "rowwise_adagrad"), build(cfg, "reference", "rowwise_adagrad")
    assert [t.rows for t in tbe.store.layout.tables] == [7, 7, 10, 30]
    kjt = make_kjt(BAGS)
    for module in (tbe, ref):
        out = module(kjt)
        (out.pooled.sum() + out.attention.sequences["hist"][0].pow(2).sum()).backward()
    with torch.no_grad():
        a, b = tbe(kjt), ref(kjt)
    assert_close(a.pooled, b.pooled)
    assert_close(a.attention.sequences["hist"][0], b.attention.sequences["hist"][0])


def test_ordinary_kinds_answer_the_attention_view_with_the_same_vectors(make_kjt):
    module = build(Full(dim=8))
    out = module(make_kjt(BAGS))
    assert out.attention is None and module(make_kjt(BAGS), view="attention").pooled.shape == out.pooled.shape


@pytest.mark.parametrize("inner", ["full:dim=8", "qr:dim=8;collisions=4"])  # QR checks ids in its embed
def test_out_of_range_target_ids_are_refused_by_a_non_hashing_inner_kind(make_kjt, inner):
    module = build(Decoupled(attention=inner, representation="hashed:dim=8"))
    with pytest.raises(IndexError, match=r"feature 'item': id 30 is outside \[0, 30\)"):
        module(make_kjt({**BAGS, "item": [[4], [5], [30]]}))


def test_memory_counts_both_tables():
    module = build(Decoupled(attention="full:dim=8", representation="full:dim=16"))
    assert module.memory().params == 40 * 8 + 40 * 16


def test_settings_strings_and_mappings():
    cfg = parse_table("decoupled:attention=hashed:dim=8;buckets=4096,representation=full:dim=16")
    assert cfg == Decoupled(attention=Hashed(dim=8, buckets=4096), representation=Full())
    assert cfg.attention == "hashed:dim=8;buckets=4096" and cfg.representation == "full"  # canonical
    assert cfg.attention_config == Hashed(dim=8, buckets=4096)
    assert (cfg.dim, cfg.attention_dim) == (16, 8)
    mapped = table_from_mapping(
        {"kind": "decoupled", "attention": {"kind": "hashed", "dim": 8, "buckets": 4096}, "representation": "full"}
    )
    assert mapped == cfg


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"attention": "decoupled"}, "cannot itself be decoupled"),
        ({"attention": "fulll:dim=8"}, r"unknown table kind 'fulll' \(did you mean 'full'\?\)"),
        ({"attention": "full:dim=0"}, r"Full\.dim must be >= 1, got 0"),
        ({"attention": "full:dim"}, "kind:key=value;key=value"),
        ({"representation": 3}, "must be a table kind"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Decoupled(**kwargs)
