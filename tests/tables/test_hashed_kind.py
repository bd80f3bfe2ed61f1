"""The hashing trick against a plain-PyTorch version of its formula (values and gradients),
plus what every hashing kind shares: budgets (tables/budget.py) and any int64 id."""

from __future__ import annotations

import pytest
import torch
from kind_formula import BAGS, BIG, RAW, SCHEMA, check_formula, formula_rows, pool, sgd
from torch.testing import assert_close

from recemb.hashing import feature_salt
from recemb.storage import STORES, StoreSettings
from recemb.tables import Full, Hashed, build_embedding
from recemb.tables.budget import fill_rows, full_bytes


@pytest.mark.parametrize("bags", [BAGS, RAW], ids=["in_range", "any_int64"])
@pytest.mark.parametrize("backend", STORES)
def test_hashed_equals_its_formula(backend, bags, make_kjt):
    cfg = Hashed(dim=8, buckets=16, seed=3)
    module = build_embedding(SCHEMA, cfg, sgd(backend))
    rows = {t.name: t.rows for t in module.store.layout.tables}
    assert rows == {"user": 16, "item": 16, "tags": 16, "genres": 12}  # min(cardinality, buckets)

    def bag(f, ids, w):
        t = f.table_name
        r = formula_rows(torch.tensor(ids, dtype=torch.int64), feature_salt(cfg.seed, t, 0), rows[t], f.cardinality)
        return pool(f, w[t][r])  # genres has a row per id: its in-range ids are not hashed

    check_formula(module, make_kjt, bag, bags)


def test_a_table_with_a_row_per_id_is_full(make_kjt):
    """Enough buckets for every id: the same vectors as `full` with the same weights, where
    hashing would have made ids collide."""
    hashed = build_embedding(SCHEMA, Hashed(dim=8, buckets=64), StoreSettings("reference"))
    full = build_embedding(SCHEMA, Full(dim=8), StoreSettings("reference"))
    hashed.store.load_table_weights(full.store.table_weights())
    with torch.no_grad():
        got, want = hashed(make_kjt(BAGS)), full(make_kjt(BAGS))
    assert_close(got.pooled, want.pooled)
    assert_close(got.sequences["hist"][0], want.sequences["hist"][0])


def test_features_sharing_a_table_read_the_same_rows(make_kjt):
    module = build_embedding(SCHEMA, Hashed(dim=8, buckets=16), StoreSettings("reference"))
    with torch.no_grad():
        out = module(make_kjt({**BAGS, "item": [[1], [2], [3], [4]], "hist": [[1], [2], [3], [4]]}))
    item = SCHEMA.pooled.index(SCHEMA.feature("item"))
    assert_close(out.sequences["hist"][0][:, 0], out.pooled[:, item])


def test_the_seed_changes_the_rows(make_kjt):
    kjt = make_kjt(BAGS)
    a, b = (build_embedding(SCHEMA, Hashed(buckets=16, seed=s), StoreSettings("reference")) for s in (0, 1))
    b.store.load_table_weights(a.store.table_weights())
    with torch.no_grad():
        assert not torch.equal(a(kjt).pooled, b(kjt).pooled)


# -- budgets ------------------------------------------------------------------------------------


def test_full_bytes_is_what_full_reports():
    for dim in (4, 16):
        assert full_bytes(BIG, dim) == build_embedding(BIG, Full(dim=dim), StoreSettings("reference")).memory().bytes


def test_fill_rows_keeps_small_tables_whole_and_caps_large_ones():
    assert fill_rows([3, 20, 1000, 5000], 1000) == [3, 20, 488, 488]
    assert fill_rows([3, 20], 100) == [3, 20]  # room for everything: no more than the demand
    assert fill_rows([10, 10], 1) is None  # not even a row each
    assert fill_rows([10, 50], 30, minimums=[8, 8]) == [10, 20]


@pytest.mark.parametrize("ratio", [0.1, 0.3])
def test_hashed_budget_ratio(ratio):
    module = build_embedding(BIG, Hashed(dim=16, budget_ratio=ratio), StoreSettings("reference"))
    full = full_bytes(BIG, 16)
    assert ratio * full * 0.95 <= module.memory().bytes <= ratio * full
    rows = [t.rows for t in module.store.layout.tables]
    assert rows[:3] == [3, 20, 1000]  # small tables keep a row per id


def test_hashed_budget_in_bytes():
    module = build_embedding(BIG, Hashed(dim=16, budget=1_000_000), StoreSettings("reference"))
    assert 950_000 <= module.memory().bytes <= 1_000_000


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"budget": 100}, r"budget=100 bytes is below the smallest configuration"),
        ({"budget_ratio": 1e-7}, r"budget_ratio=1e-07 is below the smallest configuration"),
    ],
)
def test_a_budget_below_the_minimum_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_embedding(BIG, Hashed(dim=16, **kwargs), StoreSettings("reference"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"buckets": 0}, r"Hashed\.buckets must be >= 1, got 0"),
        ({"budget": -1}, r"Hashed\.budget must be >= 0 bytes \(0: not set\), got -1"),
        ({"budget_ratio": 1.5}, r"Hashed\.budget_ratio must be in \(0, 1\] \(0: not set\), got 1\.5"),
        ({"budget": 10, "budget_ratio": 0.1}, r"give budget \(10\) or budget_ratio \(0\.1\), not both"),
        ({"buckets": 64, "budget_ratio": 0.1}, r"\['buckets'\] and a budget both set the table sizes"),
        ({"dim": 0}, r"Hashed\.dim must be >= 1, got 0"),
        ({"init_std": 0.0}, r"Hashed\.init_std must be > 0, got 0\.0"),
    ],
)
def test_hashed_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Hashed(**kwargs)
