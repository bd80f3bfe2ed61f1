"""Unified embedding (feature multiplexing) against a plain-PyTorch version of its formula
(values and gradients, projections included), rows shared across features, the
birthday-bound collision rate, chunks, sub-tables and budgets."""

from __future__ import annotations

import math

import pytest
import torch
from kind_formula import BAGS, BIG, RAW, SCHEMA, check_formula, pool, sgd

from recemb.config import from_mapping
from recemb.features import FeatureSpec, Schema
from recemb.hashing import feature_salt, hash_to_buckets
from recemb.storage import STORES, StoreSettings
from recemb.tables import Unified, build_embedding, parse_table
from recemb.tables.budget import full_bytes


@pytest.mark.parametrize("bags", [BAGS, RAW], ids=["in_range", "any_int64"])
@pytest.mark.parametrize(
    "cfg",
    [
        Unified(dim=8, rows=64, seed=3),
        Unified(dim=8, rows=64, tables=3, chunks_per_feature=("user=2", "hist=2"), seed=3),
    ],
    ids=["one_table", "chunks_and_sub_tables"],
)
@pytest.mark.parametrize("backend", STORES)
def test_unified_equals_its_formula(backend, cfg, bags, make_kjt):
    torch.manual_seed(0)
    module = build_embedding(SCHEMA, cfg, sgd(backend))
    chunks = {"user": 1, "item": 1, "tags": 1, "genres": 1}
    for entry in cfg.chunks_per_feature:  # hist shares item's table, so item takes its chunks
        name, c = entry.split("=")
        chunks[SCHEMA.feature(name).table_name] = int(c)
    width = cfg.dim // max(chunks.values())
    names = ["unified"] if cfg.tables == 1 else [f"unified#{s}" for s in range(cfg.tables)]
    first = dict(zip(chunks, [0, *torch.tensor(list(chunks.values())).cumsum(0).tolist()]))  # round robin
    rows = 64 // cfg.tables
    assert {t.name: (t.rows, t.dim) for t in module.store.layout.tables} == {n: (rows, width) for n in names}
    projected = {t for t in chunks if module.projection(t) is not None}
    assert projected == {t for t, c in chunks.items() if c * width != cfg.dim}

    def bag(f, ids, w):
        t, ids = f.table_name, torch.tensor(ids, dtype=torch.int64)
        parts = []
        for j in range(chunks[t]):
            table = names[(first[t] + j) % cfg.tables]
            parts.append(pool(f, w[table][hash_to_buckets(ids, feature_salt(cfg.seed, t, j), rows)]))
        x = torch.cat(parts)
        return x if module.projection(t) is None else module.projection(t)(x)

    check_formula(module, make_kjt, bag, bags)


def test_the_same_id_in_two_features_lands_on_different_rows(make_kjt):
    schema = Schema((FeatureSpec("a", 1000), FeatureSpec("b", 1000)))
    module = build_embedding(schema, Unified(rows=2**16), StoreSettings("reference"))
    ids = [[i] for i in range(1000)]
    rows = module.store_input(make_kjt({"a": ids, "b": ids})).to_dict()
    same = (rows["a#0"].values() == rows["b#0"].values()).float().mean()
    assert float(same) < 0.01  # 1/65536 expected by chance


@pytest.mark.parametrize("rows, features, ids", [(4096, 1, 5000), (1000, 3, 700), (2**14, 2, 2**14)])
def test_collisions_match_the_birthday_bound(rows, features, ids, make_kjt):
    """n distinct (feature, id) keys hashed into m rows fill m(1 - (1 - 1/m)^n) of them."""
    schema = Schema(tuple(FeatureSpec(f"f{i}", ids) for i in range(features)))
    module = build_embedding(schema, Unified(rows=rows), StoreSettings("reference"))
    values = module.store_input(make_kjt({f"f{i}": [[x] for x in range(ids)] for i in range(features)})).values()
    n = features * ids
    expected = rows * (1 - (1 - 1 / rows) ** n)
    std = math.sqrt(rows * math.exp(-n / rows) * (1 - (1 + n / rows) * math.exp(-n / rows)))  # occupancy variance
    assert abs(values.unique().numel() - expected) < 5 * std + 1


def test_chunks_per_feature_from_a_string_and_from_the_cli():
    a = Unified(dim=24, chunks_per_feature="C1=2;C7=3")
    assert a.chunks_per_feature == ("C1=2", "C7=3")
    assert parse_table("unified:dim=24,chunks_per_feature=C1=2;C7=3") == a
    assert from_mapping(Unified, {"dim": 24, "chunks_per_feature": ["C1=2", "C7=3"]}).chunk_dim == 8


def test_a_feature_of_more_chunks_gets_more_rows_and_width(make_kjt):
    cfg = Unified(dim=16, chunks=2, chunks_per_feature=("user=4",))
    module = build_embedding(SCHEMA, cfg, StoreSettings("reference"))
    kjt = module.store_input(make_kjt(BAGS))
    keys = kjt.keys()  # a KJT's key list (a KJT is no dict: `k in kjt` would not iterate keys)
    assert [k for k in keys if k.startswith("user#")] == ["user#0", "user#1", "user#2", "user#3"]
    assert [k for k in keys if k.startswith("tags#")] == ["tags#0", "tags#1"]
    assert module.store.layout.tables[0].dim == 4
    projected = {t for t in ("user", "item", "tags", "genres") if module.projection(t) is not None}
    assert projected == {"item", "tags", "genres"}  # 2 chunks x 4 != 16; user's 4 x 4 is 16


@pytest.mark.parametrize(
    "cfg",
    [
        Unified(dim=16, budget_ratio=0.1),
        Unified(dim=16, budget_ratio=0.1, tables=3, chunks=2, chunks_per_feature="C4=4"),
    ],
)
def test_unified_budget_ratio_counts_the_projections(cfg):
    module = build_embedding(BIG, cfg, StoreSettings("reference"))
    full = full_bytes(BIG, 16)
    assert 0.05 * full <= module.memory().bytes <= 0.1 * full


def test_unified_budget_below_the_minimum_is_refused():
    cfg = Unified(dim=16, chunks_per_feature=("C1=4",), budget=1000)  # projections alone need 4 x 16 x 16 floats
    with pytest.raises(ValueError, match=r"Unified: budget=1000 bytes is below the smallest configuration"):
        build_embedding(BIG, cfg, StoreSettings("reference"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dim": 12, "chunks": 2}, r"Unified\.dim=12 must be a multiple of 4 x the most chunks of a feature \(2\)"),
        ({"chunks_per_feature": ("C1",)}, r"entries must look like 'feature=chunks' .*got 'C1'"),
        ({"chunks_per_feature": ("C1=0",)}, r"got 'C1=0'"),
        ({"tables": 0}, r"Unified\.tables must be >= 1, got 0"),
        ({"rows": 100, "budget_ratio": 0.5}, r"\['rows'\] and a budget both set the table sizes"),
    ],
)
def test_unified_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Unified(**kwargs)


def test_unknown_features_in_chunks_are_refused():
    with pytest.raises(ValueError, match=r"names unknown features \['C99'\]"):
        build_embedding(SCHEMA, Unified(chunks_per_feature="C99=2"), StoreSettings("reference"))
