"""mixed_dim: widths by the power rule, fitted to a budget; fixed widths; hashed rows;
projections to the model's width; bad input."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from recemb.features import FeatureSpec, Schema
from recemb.storage import EmbeddingOptimizer, StoreSettings
from recemb.tables import MixedDim, build_embedding, parse_table
from recemb.tables.budget import full_bytes

SCHEMA = Schema(
    (
        FeatureSpec("small", 5),
        FeatureSpec("mid", 200),
        FeatureSpec("big", 5000),
        FeatureSpec("hist", 5000, "sequence", max_len=3, table="big"),
        FeatureSpec("bag", 50, "multi_hot", pooling="mean"),
    )
)


def build(**kwargs):
    return build_embedding(SCHEMA, MixedDim(**kwargs), StoreSettings("reference"))


def test_widths_follow_the_power_rule():
    module = build(dim=32, alpha=0.3)
    widths = module.widths
    assert widths["small"] == 32, "without a budget the smallest table gets the full dim"
    assert widths["small"] >= widths["bag"] >= widths["mid"] >= widths["big"] >= 4
    assert all(w % 4 == 0 for w in widths.values())
    assert widths["big"] < 32
    assert build(dim=32, alpha=0.0).widths == {t: 32 for t in widths}  # alpha 0: uniform


@pytest.mark.parametrize("ratio", [0.2, 0.3, 0.5])
def test_budget_is_respected_projections_included(ratio):
    module = build(dim=32, budget_ratio=ratio)
    budget = ratio * full_bytes(SCHEMA, 32)
    assert module.memory().bytes <= budget
    assert module.memory().bytes > 0.7 * budget, "lambda uses most of the budget"
    tighter = build(dim=32, budget_ratio=ratio * 0.75)
    assert sum(tighter.widths.values()) <= sum(module.widths.values())


def test_fixed_widths_and_hashed_rows(make_kjt):
    module = build(dim=16, widths=("big=4", "small=16"), rows="big=64")
    assert module.widths["big"] == 4 and module.widths["small"] == 16
    assert module.rows["big"] == 64 and module.hashed == ["big"]
    assert {t.name: (t.rows, t.dim) for t in module.store.layout.tables}["big"] == (64, 4)
    kjt = make_kjt(
        {"small": [[1], [2]], "mid": [[3], [4]], "big": [[4999], [-7]], "hist": [[1, 2], []], "bag": [[1, 2], []]}
    )
    e = module(kjt)  # hashed ids need not be in range
    assert e.pooled.shape == (2, 4, 16)
    assert torch.all(e.pooled[1, 3] == 0), "an empty bag stays zero through the projection (no bias)"
    assert torch.all(e.sequences["hist"][0][1] == 0) and torch.all(e.sequences["hist"][0][0, 2] == 0)
    with pytest.raises(IndexError, match=r"feature 'small': id 9 is outside \[0, 5\)"):
        module(make_kjt({"small": [[9], [2]], "mid": [[3], [4]], "big": [[1], [2]], "hist": [[], []], "bag": [[], []]}))


def test_a_width_of_dim_has_no_projection():
    module = build(dim=16, widths="small=16;mid=8;big=4;bag=16")
    assert module.projection("small") is None and module.projection("bag") is None
    assert module.projection("mid").weight.shape == (16, 8)


@pytest.mark.parametrize(
    "text, match",
    [
        ("mixed_dim:widths=small=6", r"widths entry small=6 must be a multiple of 4 in \[4, dim=16\]"),
        ("mixed_dim:widths=small=32", r"widths entry small=32 must be a multiple of 4 in \[4, dim=16\]"),
        ("mixed_dim:dim=18", r"MixedDim\.dim must be a multiple of 4"),
        ("mixed_dim:alpha=-1", r"MixedDim\.alpha must be >= 0"),
        ("mixed_dim:widths=small", r"entries must look like 'feature=integer', got 'small'"),
    ],
)
def test_bad_settings_are_refused(text, match):
    with pytest.raises(ValueError, match=match):
        parse_table(text)


def test_budget_below_the_smallest_configuration_is_refused():
    with pytest.raises(ValueError, match=r"budget=1000 bytes is below the smallest configuration .* bytes\)"):
        build(dim=16, budget=1000)
    with pytest.raises(ValueError, match=r"names unknown feature 'nope'"):
        build(widths="nope=4")


@pytest.mark.parametrize("opt", ["adagrad", "rowwise_adagrad"])
def test_descending_widths_train_alike_on_both_stores(opt, make_kjt, make_bags, trainable):
    """Schema order small (16), mid (8), big (4), bag (16): the store's first lookup reads
    the widest table, the case fbgemm's CPU row-wise Adagrad once crashed on. The fused
    path must train exactly like the reference path, projections included."""
    widths = "small=16;mid=8;big=4;bag=16"
    gen = torch.Generator().manual_seed(5)
    modules = []
    for backend in ("tbe", "reference"):
        torch.manual_seed(0)  # same projections
        settings = StoreSettings(backend, EmbeddingOptimizer(opt, lr=0.1))
        modules.append(build_embedding(SCHEMA, MixedDim(dim=16, widths=widths), settings))
    kinds = {"single": "single", "multi_hot": "multi", "sequence": "sequence"}
    specs = {f.name: (f.cardinality, kinds[f.kind], f.max_len) for f in SCHEMA.sparse}
    for _ in range(3):
        kjt = make_kjt(make_bags(gen, specs, 4))
        w = torch.randn(4, 4 * 16 + 3 * 16, generator=gen)
        outs = []
        for module in modules:
            e = module(kjt)
            out = torch.cat([e.pooled.flatten(1), e.sequences["hist"][0].flatten(1)], dim=1)
            (out * w).sum().backward()
            torch.optim.SGD(trainable(module), lr=0.1).step()
            module.zero_grad()
            outs.append(out.detach())
        assert_close(outs[0], outs[1])
    tbe, ref = modules
    for name, weight in ref.store.table_weights().items():
        assert_close(tbe.store.table_weights()[name], weight, msg=lambda m, name=name: f"table {name!r}: {m}")
    for name, states in ref.store.optimizer_states().items():
        for got, want in zip(tbe.store.optimizer_states()[name], states, strict=True):
            assert_close(got, want, msg=lambda m, name=name: f"optimizer state of table {name!r}: {m}")
    assert len(tbe.projections) == 2  # mid and big
    assert_close(dict(tbe.projections.named_parameters()), dict(ref.projections.named_parameters()))
