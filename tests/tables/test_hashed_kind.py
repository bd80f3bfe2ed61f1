"""The hashing trick against a plain-PyTorch version of its formula (values and gradients),
plus what every hashing kind shares: budgets (tables/budget.py) and any int64 id."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from recemb.features import FeatureSpec, Schema
from recemb.hashing import feature_salt, hash_to_buckets
from recemb.storage import STORES, EmbeddingOptimizer, StoreSettings
from recemb.tables import Full, Hashed, build_embedding
from recemb.tables.budget import fill_rows, full_bytes

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
@pytest.mark.parametrize("backend", STORES)
def test_hashed_equals_its_formula(backend, bags, make_kjt):
    cfg = Hashed(dim=8, buckets=16, seed=3)
    module = build_embedding(SCHEMA, cfg, sgd(backend))
    rows = {t.name: t.rows for t in module.store.layout.tables}
    assert rows == {"user": 16, "item": 16, "tags": 16, "genres": 12}  # min(cardinality, buckets)

    def bag(f, ids, w):
        t = f.table_name
        r = hash_to_buckets(torch.tensor(ids, dtype=torch.int64), feature_salt(cfg.seed, t, 0), rows[t])
        return pool(f, w[t][r])

    check_formula(module, make_kjt, bag, bags)


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
