"""Double hashing against a plain-PyTorch version of its formula: k salted hashes into a
shared table or k tables, summed or concatenated; values and gradients."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from recemb.features import FeatureSpec, Schema
from recemb.hashing import feature_salt, hash_to_buckets
from recemb.storage import STORES, EmbeddingOptimizer, StoreSettings
from recemb.tables import DoubleHash, build_embedding
from recemb.tables.budget import full_bytes

SCHEMA = Schema(
    (
        FeatureSpec("user", 50),
        FeatureSpec("item", 40),
        FeatureSpec("tags", 30, "multi_hot", pooling="mean"),
        FeatureSpec("hist", 40, "sequence", max_len=3, table="item"),
        FeatureSpec("genres", 12, "multi_hot"),
    )
)
BAGS = {
    "user": [[3], [7], [3], [49]],
    "item": [[1], [2], [39], [1]],
    "tags": [[], [1, 2, 2], [29], [5, 6, 7, 8]],
    "hist": [[], [1, 2, 3], [39], [4, 1]],
    "genres": [[0, 11], [], [3, 3], [5]],
}
RAW = {  # any int64 is a valid raw id for a hashing kind
    **BAGS,
    "user": [[-5], [2**62], [-(2**63)], [2**63 - 1]],
    "tags": [[-1, 10**12], [], [7], [-(2**40), 3]],
}
BIG = Schema(tuple(FeatureSpec(f"C{i}", c) for i, c in enumerate((3, 20, 1000, 50_000, 200_000))))


def pool(spec: FeatureSpec, vectors: torch.Tensor) -> torch.Tensor:
    """A bag's vector from its ids' vectors [n, D]: sum, or mean (an empty bag is zeros)."""
    total = vectors.sum(dim=0)
    return total / max(len(vectors), 1) if spec.pooling == "mean" else total


def by_hand(bags, bag, dim):
    """pooled [B, F, D] and padded sequences, from bag(feature, ids) -> [D]."""
    pooled = torch.stack([torch.stack([bag(f, ids) for ids in bags[f.name]]) for f in SCHEMA.pooled], dim=1)
    def padded(f, ids):
        return torch.stack([bag(f, [i]) for i in ids] + [torch.zeros(dim)] * (f.max_len - len(ids)))

    sequences = {f.name: torch.stack([padded(f, ids) for ids in bags[f.name]]) for f in SCHEMA.sequences}
    return pooled, sequences


def check_formula(module, make_kjt, bag, bags=BAGS) -> None:
    """Forward equals the formula; one SGD(lr=1) step of the store moves each weight by
    minus its gradient under the formula; dense parameters get the formula's gradients."""
    weights = {n: w.requires_grad_() for n, w in module.store.table_weights().items()}
    dense = [p for n, p in module.named_parameters() if not n.startswith("store.")]
    pooled, sequences = by_hand(bags, lambda f, ids: bag(f, ids, weights), module.dim)
    got = module(make_kjt(bags))
    assert_close(got.pooled, pooled)
    for name, padded in sequences.items():
        assert_close(got.sequences[name][0], padded)

    gen = torch.Generator().manual_seed(0)
    r_pooled = torch.randn(pooled.shape, generator=gen)
    r_seq = {n: torch.randn(s.shape, generator=gen) for n, s in sequences.items()}

    def loss(p, s):
        return (p * r_pooled).sum() + sum((s[n] * r_seq[n]).sum() for n in s)

    params = list(weights.values()) + dense
    grads = torch.autograd.grad(loss(pooled, sequences), params, allow_unused=True)
    before = module.store.table_weights()
    loss(got.pooled, {n: v[0] for n, v in got.sequences.items()}).backward()
    after = module.store.table_weights()
    for (name, w), g in zip(weights.items(), grads):
        assert_close(before[name] - after[name], torch.zeros_like(w) if g is None else g, msg=lambda m: f"{name}: {m}")
    for p, g in zip(dense, grads[len(weights) :]):
        assert_close(p.grad, g)


def sgd(backend: str) -> StoreSettings:
    return StoreSettings(backend, EmbeddingOptimizer("sgd", lr=1.0))


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
            rows = hash_to_buckets(ids, feature_salt(cfg.seed, t, i), tables[table].rows)
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
