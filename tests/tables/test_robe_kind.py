"""ROBE-Z against a plain-PyTorch version of its formula, written on the flat array (values
and gradients), and reads that wrap around the array's end."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from recemb.features import FeatureSpec, Schema
from recemb.hashing import feature_salt, hash_to_buckets
from recemb.storage import STORES, EmbeddingOptimizer, StoreSettings
from recemb.tables import Robe, build_embedding
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
