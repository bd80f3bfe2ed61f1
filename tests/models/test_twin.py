"""TWIN-style two-stage attention: the search keeps the top k present items and the
aggregation attends over those only; short and empty histories are masked."""

import math

import pytest
import torch
from torch.testing import assert_close

from recemb.features import FeatureSpec, Schema
from recemb.models import TWIN, TWINConfig
from recemb.models.target_attention import top_k
from recemb.models.twin import TwoStageAttention
from recemb.storage import StoreSettings
from recemb.tables import Decoupled, Full, build_embedding

SCHEMA = Schema(
    (FeatureSpec("item", 30), FeatureSpec("hist_item", 30, "sequence", max_len=6, table="item")),
)


def test_top_k_picks_the_best_present_items_and_marks_missing_ones():
    scores = torch.tensor([[0.1, 0.9, 0.5, 2.0], [3.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False], [False] * 4])
    positions, present = top_k(scores, mask, 2)
    assert sorted(positions[0].tolist()) == [1, 2]  # 2.0 is padding
    assert positions[1].tolist()[present[1].tolist().index(True)] == 0 and present[1].sum() == 1
    assert not present[2].any()
    assert top_k(scores, mask, 10)[0].shape == (3, 4)  # k is capped at L


def test_aggregation_attends_over_the_searched_items_only():
    torch.manual_seed(0)
    layer = TwoStageAttention(width=4, k=2, heads=2, head_dim=3)
    target, history = torch.randn(1, 4), torch.randn(1, 5, 4)
    mask = torch.tensor([[True, True, True, True, False]])
    q = layer.query(target).view(2, 3)
    k, v = layer.key_value(history[0]).view(5, 2, 2, 3).unbind(1)  # [L, H, d]
    scores = torch.einsum("hd,lhd->lh", q, k) / math.sqrt(3)  # [L, H]
    best = scores[:4].mean(1).topk(2).indices
    expected = torch.cat([(torch.softmax(scores[best, h], 0).unsqueeze(1) * v[best, h]).sum(0) for h in range(2)])
    assert_close(layer(target, history, mask)[0], expected)


def test_empty_and_short_histories(make_kjt):
    torch.manual_seed(0)
    model = TWIN(build_embedding(SCHEMA, Full(dim=8), StoreSettings("reference")), TWINConfig(k=3))
    kjt = make_kjt({"item": [[1], [2], [3]], "hist_item": [[], [4], [5, 6, 7, 8, 9]]})
    emb = model.embedding(kjt)
    out = model.attention[0](*model.behaviour(emb, model.behaviours[0]))
    assert not out[0].any() and out[1].any()
    logits = model(kjt, torch.zeros(3, 0))
    logits.sum().backward()
    assert torch.isfinite(logits).all()
    assert all(torch.isfinite(p.grad).all() for p in model.dense_parameters() if p.grad is not None)


def test_twin_takes_the_representation_view_of_a_decoupled_table(make_kjt):
    table = Decoupled(attention="full:dim=4", representation="full:dim=8")
    model = TWIN(build_embedding(SCHEMA, table, StoreSettings("reference")))
    assert model.attention[0].query.in_features == 8
    kjt = make_kjt({"item": [[1], [2]], "hist_item": [[3, 4], []]})
    before = model.embedding.store.table_weights()
    model(kjt, torch.zeros(2, 0)).sum().backward()
    after = model.embedding.store.table_weights()
    assert torch.equal(before["att/item"], after["att/item"])  # unused view: no gradient
    assert not torch.equal(before["rep/item"], after["rep/item"])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match=r"TWINConfig.k must be >= 1, got 0"):
        TWINConfig(k=0)
