"""Double hashing against a plain-PyTorch version of its formula: k salted hashes into a
shared table or k tables, summed or concatenated; values and gradients."""

from __future__ import annotations

import pytest
import torch
from kind_formula import BAGS, BIG, RAW, SCHEMA, check_formula, formula_rows, pool, sgd

from recemb.features import FeatureSpec, Schema
from recemb.hashing import feature_salt
from recemb.storage import STORES, StoreSettings
from recemb.tables import DoubleHash, build_embedding
from recemb.tables.budget import full_bytes


@pytest.mark.parametrize("bags", [BAGS, RAW], ids=["in_range", "any_int64"])
@pytest.mark.parametrize("combine, shared", [("sum", True), ("sum", False), ("concat", True), ("concat", False)])
@pytest.mark.parametrize("backend", STORES)
def test_double_hash_equals_its_formula(backend, combine, shared, bags, make_kjt):
    cfg = DoubleHash(dim=8, hashes=2, combine=combine, shared=shared, buckets=16, seed=5)
    module = build_embedding(SCHEMA, cfg, sgd(backend))
    tables = {t.name: t for t in module.store.layout.tables}
    width = 8 if combine == "sum" else 4
    assert all(t.dim == width for t in tables.values())
    assert len(tables) == (4 if shared else 8)  # user, item (with hist), tags, genres

    def bag(f, ids, w):
        t = f.table_name
        ids = torch.tensor(ids, dtype=torch.int64)
        parts = []
        for i in range(2):
            table = t if shared else f"{t}#{i}"
            own = not (shared and combine == "concat")  # genres (12 ids, 16 buckets): own rows
            rows = formula_rows(ids, feature_salt(cfg.seed, t, i), tables[table].rows, f.cardinality, own)
            parts.append(pool(f, w[table][rows]))
        return sum(parts) if combine == "sum" else torch.cat(parts)

    check_formula(module, make_kjt, bag, bags)


def test_three_hashes_start_with_a_full_tables_spread():
    big = Schema((FeatureSpec("x", 100_000),))
    module = build_embedding(big, DoubleHash(dim=16, hashes=3, init_std=0.1), StoreSettings("reference"))
    (table,) = module.store.layout.tables
    assert table.init_std == pytest.approx(0.1 / 3**0.5)


@pytest.mark.parametrize("kwargs", [{"shared": True}, {"shared": False}, {"combine": "concat", "hashes": 4}])
def test_double_hash_budget_ratio(kwargs):
    module = build_embedding(BIG, DoubleHash(dim=16, budget_ratio=0.1, **kwargs), StoreSettings("reference"))
    full = full_bytes(BIG, 16)
    assert 0.05 * full <= module.memory().bytes <= 0.1 * full


def test_double_hash_budget_below_the_minimum_is_refused():
    with pytest.raises(ValueError, match=r"DoubleHash: budget=64 bytes is below the smallest configuration"):
        build_embedding(BIG, DoubleHash(dim=16, budget=64), StoreSettings("reference"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hashes": 1}, r"DoubleHash\.hashes must be >= 2 \(1 is the `hashed` kind\), got 1"),
        ({"combine": "max"}, r"DoubleHash\.combine must be one of \('sum', 'concat'\), got 'max'"),
        ({"combine": "concat", "dim": 16, "hashes": 3}, r"dim=16 must be divisible by hashes=3"),
        ({"combine": "concat", "dim": 12, "hashes": 2}, r"dim/hashes = 12/2 must be a multiple of 4 .*pick dim=16"),
        ({"buckets": 8, "budget": 1000}, r"\['buckets'\] and a budget both set the table sizes"),
    ],
)
def test_double_hash_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DoubleHash(**kwargs)
