"""dnis: frequency groups, the soft selection α scaling vectors, frozen rows on validation
steps, magnitude pruning to the target, bad input."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from recemb.features import FeatureSpec, Schema
from recemb.models import build_model, model_config
from recemb.storage import EmbeddingOptimizer, StoreSettings
from recemb.tables import Dnis, build_embedding, parse_table
from recemb.tables.budget import full_bytes
from recemb.tables.dnis import group_starts

SCHEMA = Schema(
    (
        FeatureSpec("user", 100),
        FeatureSpec("item", 50),
        FeatureSpec("hist", 50, "sequence", max_len=3, table="item"),
        FeatureSpec("tags", 8, "multi_hot"),
    )
)


def build(**kwargs):
    return build_embedding(SCHEMA, Dnis(**kwargs), StoreSettings("reference", EmbeddingOptimizer("adagrad", lr=0.1)))


def test_groups_are_log_spaced_id_ranges():
    assert group_starts(100, 4) == [0, 4, 10, 32]
    assert group_starts(1, 4) == [0]
    assert group_starts(3, 4) == [0, 2]
    module = build(groups=4)
    assert module.groups["user"] == [(0, 4), (4, 10), (10, 32), (32, 100)]
    assert module.groups["tags"] == [(0, 8)], "a table a bag reads has one group"
    assert module.n_groups == 4 + len(group_starts(50, 4)) + 1


def test_selection_scales_each_id_by_its_group(make_kjt):
    module = build(groups=4)
    with torch.no_grad():
        module.selection.zero_()
        module.selection[1] = 1.0  # user group [4, 10)
    e = module(make_kjt({"user": [[5], [40]], "item": [[0], [1]], "hist": [[0], []], "tags": [[1], []]}))
    raw = module.store.table_weights()["user"]
    assert_close(e.pooled[0, 0], raw[5])
    assert torch.all(e.pooled[1, 0] == 0) and torch.all(e.pooled[:, 1:] == 0)


def test_validation_steps_reach_alpha_but_not_the_rows(make_kjt):
    module = build()
    kjt = make_kjt({"user": [[5], [40]], "item": [[0], [1]], "hist": [[0, 2], []], "tags": [[1], []]})
    before = module.store.table_weights()
    with module.frozen_rows():
        module(kjt).pooled.sum().backward()
    assert module.selection.grad is not None and module.selection.grad.abs().sum() > 0
    for name, w in module.store.table_weights().items():
        assert torch.equal(w, before[name])


@pytest.mark.parametrize("kwargs", [{"sparsity": 0.6}, {"budget_ratio": 0.3}])
def test_pruning_meets_the_target_in_multiples_of_4(kwargs, make_kjt):
    module = build(dim=16, groups=3, **kwargs)
    with torch.no_grad():
        module.selection.uniform_(0, 1, generator=torch.Generator().manual_seed(0))
    info = module.prune()
    kept = module.mask.sum(1)
    assert torch.all(kept % 4 == 0)
    full = full_bytes(SCHEMA, 16)
    if "sparsity" in kwargs:
        assert info["sparsity"] >= 0.6 and info["sparsity"] < 0.75
    else:
        assert module.serving_bytes() <= 0.3 * full
    e = module(make_kjt({"user": [[5], [40]], "item": [[0], [1]], "hist": [[0, 2], []], "tags": [[1], []]}))
    assert torch.all(e.pooled[0, 0][module.mask[1] == 0] == 0), "pruned dimensions read zero"


@pytest.mark.parametrize(
    "text, match",
    [
        ("dnis:mode=alternate", r"Dnis\.mode must be one of \('bilevel', 'joint'\), got 'alternate'"),
        ("dnis:sparsity=1", r"Dnis\.sparsity must be in \[0, 1\)"),
        ("dnis:dim=6", r"Dnis\.dim must be a multiple of 4"),
        ("dnis:groups=0", r"Dnis\.groups must be >= 1"),
    ],
)
def test_bad_settings_are_refused(text, match):
    with pytest.raises(ValueError, match=match):
        parse_table(text)


def test_a_budget_below_the_column_maps_is_refused():
    with pytest.raises(ValueError, match=r"Dnis: budget=16 bytes is below the smallest configuration"):
        build(budget=16).prune()


def test_works_inside_a_model(make_kjt):
    model = build_model(build(), model_config("autoint", {"layers": 1}))
    out = model(
        make_kjt({"user": [[5], [40]], "item": [[0], [1]], "hist": [[0, 2], []], "tags": [[1], []]}), torch.zeros(2, 0)
    )
    assert out.shape == (2,)
