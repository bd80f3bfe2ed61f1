"""What the hashed kinds' formula tests share: a schema with every feature kind, bags of
ids for it, the formula's output built by hand, and the check that a kind's forward and
its store's SGD(lr=1) step agree with autograd on that formula."""

from __future__ import annotations

import torch
from torch.testing import assert_close

from recemb.features import FeatureSpec, Schema
from recemb.hashing import hash_to_buckets
from recemb.storage import EmbeddingOptimizer, StoreSettings

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


def formula_rows(ids: torch.Tensor, salt: int, rows: int, cardinality: int, own: bool = True) -> torch.Tensor:
    """The rows a hashing kind's formula reads: hashed, except that in a table with a row per
    id (and `own`), ids in range read their own row."""
    hashed = hash_to_buckets(ids, salt, rows)
    if own and rows == cardinality:
        return torch.where((ids >= 0) & (ids < rows), ids, hashed)
    return hashed


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
        assert_close(before[name] - after[name], torch.zeros_like(w) if g is None else g, msg=lambda m, name=name: f"{name}: {m}")
    for p, g in zip(dense, grads[len(weights) :]):
        assert_close(p.grad, g)


def sgd(backend: str) -> StoreSettings:
    return StoreSettings(backend, EmbeddingOptimizer("sgd", lr=1.0))
