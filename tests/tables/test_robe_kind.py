"""ROBE-Z against a plain-PyTorch version of its formula, written on the flat array (values
and gradients), and reads that wrap around the array's end."""

from __future__ import annotations

import pytest
import torch
from kind_formula import BAGS, BIG, RAW, SCHEMA, check_formula, pool, sgd

from recemb.features import FeatureSpec, Schema
from recemb.hashing import feature_salt, hash_to_buckets
from recemb.storage import STORES, StoreSettings
from recemb.tables import Robe, build_embedding
from recemb.tables.budget import full_bytes


def robe_bag(cfg: Robe):
    """The paper's formula on the flat array A: block j of id x is A[o_j + 0..Z-1] (mod size),
    o_j = align * h_j(x) with h_j hashing into size/align offsets."""

    def bag(f, ids, w):
        flat = w["robe"].reshape(-1)
        size = flat.numel()
        vectors = []
        for x in ids:
            blocks = []
            for j in range(cfg.dim // cfg.block):
                salt = feature_salt(cfg.seed, f.table_name, j)
                start = cfg.align * int(hash_to_buckets(torch.tensor([x]), salt, size // cfg.align))
                blocks.append(flat[(start + torch.arange(cfg.block)) % size])
            vectors.append(torch.cat(blocks))
        return pool(f, torch.stack(vectors) if vectors else torch.zeros(0, cfg.dim))

    return bag


@pytest.mark.parametrize("bags", [BAGS, RAW], ids=["in_range", "any_int64"])
@pytest.mark.parametrize("backend", STORES)
def test_robe_equals_its_formula(backend, bags, make_kjt):
    cfg = Robe(dim=16, size=24, block=8, align=4, seed=1)  # 6 rows: many reads wrap around
    module = build_embedding(SCHEMA, cfg, sgd(backend))
    assert [(t.name, t.rows, t.dim) for t in module.store.layout.tables] == [("robe", 6, 4)]
    check_formula(module, make_kjt, robe_bag(cfg), bags)


def test_robe_at_any_offset_equals_its_formula(make_kjt):
    """align=1 is the paper's exact array (the reference store: TBE needs widths of 4)."""
    cfg = Robe(dim=8, size=13, block=4, align=1, seed=4)
    check_formula(build_embedding(SCHEMA, cfg, sgd("reference")), make_kjt, robe_bag(cfg))
    with pytest.raises(ValueError, match="multiples of 4"):
        build_embedding(SCHEMA, cfg, StoreSettings("tbe"))


@pytest.mark.parametrize("align", [1, 4])
def test_a_block_at_the_end_of_the_array_wraps_to_its_start(align, make_kjt):
    cfg = Robe(dim=8, size=20, block=8, align=align)
    schema = Schema((FeatureSpec("x", 10**6),))
    module = build_embedding(schema, cfg, StoreSettings("reference"))
    rows = module.rows
    starts = module.block_starts(torch.arange(5000), "x", 0)
    x = int((starts == rows - 1).nonzero()[0])  # an id whose block starts at the last row
    flat = module.store.table_weights()["robe"].reshape(-1)
    with torch.no_grad():
        got = module(make_kjt({"x": [[x]]})).pooled[0, 0]
    assert torch.equal(got, torch.cat([flat[-align:], flat[: 8 - align]]))


def test_robe_budget_ratio():
    module = build_embedding(BIG, Robe(dim=16, budget_ratio=0.1), StoreSettings("reference"))
    full = full_bytes(BIG, 16)
    assert 0.05 * full <= module.memory().bytes <= 0.1 * full
    assert module.memory().bytes > 0.1 * full - 16  # one array: the whole budget but a row


def test_robe_default_size_never_exceeds_full():
    schema = Schema((FeatureSpec("x", 10),))
    assert build_embedding(schema, Robe(dim=16), StoreSettings("reference")).memory().bytes == full_bytes(schema, 16)


def test_robe_budget_below_the_minimum_is_refused():
    with pytest.raises(ValueError, match=r"Robe: budget=16 bytes is below the smallest configuration \(one block"):
        build_embedding(BIG, Robe(dim=16, budget=16), StoreSettings("reference"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"block": 5}, r"Robe\.block must be >= 1 and divide dim=16, got 5"),
        ({"block": 8, "align": 3}, r"Robe\.align must be >= 1 and divide block=8, got 3"),
        ({"size": 30}, r"Robe\.size must be a multiple of align=4 and at least block=8, got 30"),
        ({"size": 4}, r"Robe\.size must be a multiple of align=4 and at least block=8, got 4"),
        ({"size": 64, "budget": 1000}, r"\['size'\] and a budget both set the table sizes"),
    ],
)
def test_robe_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Robe(**kwargs)
