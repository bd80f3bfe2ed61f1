"""Hash embeddings against a plain-PyTorch version of their formula (values and gradients):
sum_i p_i(x) E[h_i(x)], components from a shared pool, importance weights hashed from a
second table stored ceil4(k) wide."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from recemb.features import FeatureSpec, Schema
from recemb.hashing import feature_salt, hash_to_buckets
from recemb.storage import STORES, EmbeddingOptimizer, StoreSettings
from recemb.tables import HashEmbedding, build_embedding
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
@pytest.mark.parametrize("hashes", [2, 3])
@pytest.mark.parametrize("backend", STORES)
def test_hash_embedding_equals_its_formula(backend, hashes, bags, make_kjt):
    cfg = HashEmbedding(dim=8, hashes=hashes, buckets=8, weight_rows=16, seed=2)
    module = build_embedding(SCHEMA, cfg, sgd(backend))
    tables = {t.name: t for t in module.store.layout.tables}
    assert (tables["user#pool"].rows, tables["user#weights"].rows, tables["user#weights"].dim) == (8, 16, 4)
    k = hashes

    def bag(f, ids, w):
        t, ids = f.table_name, torch.tensor(ids, dtype=torch.int64)
        components = [
            pool(f, w[f"{t}#pool"][hash_to_buckets(ids, feature_salt(cfg.seed, t, i), tables[f"{t}#pool"].rows)])
            for i in range(k)
        ]
        rows = hash_to_buckets(ids, feature_salt(cfg.seed, t, k), tables[f"{t}#weights"].rows)
        p = pool(f, w[f"{t}#weights"][rows])[:k]  # the first k of the ceil4(k) stored columns
        return sum(p[i] * components[i] for i in range(k))

    check_formula(module, make_kjt, bag, bags)


def test_the_importance_tables_padding_is_never_read_or_trained(make_kjt):
    settings = StoreSettings("tbe", EmbeddingOptimizer("adagrad"))
    module = build_embedding(SCHEMA, HashEmbedding(dim=8, hashes=3), settings)
    before = module.store.table_weights()["item#weights"]
    out = module(make_kjt(BAGS))
    (out.pooled.sum() + out.sequences["hist"][0].sum()).backward()
    after = module.store.table_weights()["item#weights"]
    assert torch.equal(after[:, 3], before[:, 3]) and not torch.equal(after[:, :3], before[:, :3])


def test_init_gives_a_full_tables_spread():
    module = build_embedding(BIG, HashEmbedding(dim=16, hashes=4, init_std=0.1), StoreSettings("reference"))
    tables = {t.name: t for t in module.store.layout.tables}
    assert tables["C4#pool"].init_std == pytest.approx(0.05) and tables["C4#weights"].init_std == 1.0


@pytest.mark.parametrize("share", [0.2, 0.5, 0.8])
def test_hash_embedding_budget_ratio(share):
    cfg = HashEmbedding(dim=16, budget_ratio=0.1, weight_share=share)
    module = build_embedding(BIG, cfg, StoreSettings("reference"))
    full = full_bytes(BIG, 16)
    assert 0.05 * full <= module.memory().bytes <= 0.1 * full
    weights = sum(t.rows * t.dim for t in module.store.layout.tables if t.name.endswith("#weights"))
    assert weights * 4 <= share * 0.1 * full * 1.01


def test_hash_embedding_budget_below_the_minimum_is_refused():
    with pytest.raises(ValueError, match=r"HashEmbedding: budget=200 bytes is below the smallest configuration"):
        build_embedding(BIG, HashEmbedding(dim=16, budget=200), StoreSettings("reference"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hashes": 0}, r"HashEmbedding\.hashes must be >= 1, got 0"),
        ({"weight_share": 1.0}, r"HashEmbedding\.weight_share must be in \(0, 1\), got 1\.0"),
        ({"weight_rows": 10, "budget_ratio": 0.1}, r"\['weight_rows'\] and a budget both set the table sizes"),
    ],
)
def test_hash_embedding_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HashEmbedding(**kwargs)


@pytest.mark.parametrize("opt", ["adagrad", "rowwise_adagrad"])
def test_tbe_store_serves_interleaved_widths_like_the_reference(opt, make_kjt):
    """Guards the TBE store's regrouping that kinds of two widths (this one's pool and
    weights) rely on: fbgemm's CPU backward steps a table once per run of consecutive
    features, so a row read by keys on both sides of another width's key got two optimizer
    steps. (A storage test at heart; it sits here with the kind that needed it.)"""
    from recemb.storage import LookupSpec, StoreLayout, TableSpec, build_store

    layout = StoreLayout(
        (TableSpec("a", 5, 8), TableSpec("b", 5, 4)),
        (LookupSpec("a1", "a"), LookupSpec("b", "b"), LookupSpec("a2", "a"), LookupSpec("s", "a", "none", 2)),
    )
    kjt = make_kjt({"a1": [[2], [1]], "b": [[2], [0]], "a2": [[2], [4]], "s": [[2, 3], []]})
    stores = [build_store(layout, StoreSettings(b, EmbeddingOptimizer(opt, lr=0.1))) for b in ("tbe", "reference")]
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(2, layout.width, generator=gen)
    with torch.no_grad():
        assert_close(stores[0](kjt), stores[1](kjt))
    for store in stores:
        (store(kjt) * w).sum().backward()
    for name, weights in stores[1].table_weights().items():
        assert_close(stores[0].table_weights()[name], weights)
        for a, b in zip(stores[0].optimizer_states()[name], stores[1].optimizer_states()[name]):
            assert_close(a, b)
