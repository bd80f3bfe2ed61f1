"""Quotient-remainder embeddings against a plain-PyTorch version of their formula (values and
gradients), distinct (q, r) pairs for distinct ids, out-of-range ids, init and budgets."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from recemb.features import FeatureSpec, Schema
from recemb.storage import STORES, EmbeddingOptimizer, StoreSettings
from recemb.tables import QR, build_embedding
from recemb.tables.budget import full_bytes
from recemb.tables.qr import collisions_for, fewest_rows, qr_rows

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


@pytest.mark.parametrize("combine", ["mult", "add", "concat"])
@pytest.mark.parametrize("backend", STORES)
def test_qr_equals_its_formula(backend, combine, make_kjt):
    cfg = QR(dim=8, combine=combine, collisions=6)
    module = build_embedding(SCHEMA, cfg, sgd(backend))
    tables = {t.name: t for t in module.store.layout.tables}
    assert tables["user#r"].rows == 6 and tables["user#q"].rows == 9  # ceil(50 / 6)

    def bag(f, ids, w):
        t, ids = f.table_name, torch.tensor(ids, dtype=torch.int64)
        m = tables[f"{t}#r"].rows
        q, r = pool(f, w[f"{t}#q"][ids // m]), pool(f, w[f"{t}#r"][ids % m])  # each table's bag pooled, then combined
        return {"mult": q * r, "add": q + r, "concat": torch.cat([q, r])}[combine]

    check_formula(module, make_kjt, bag)


@pytest.mark.parametrize("cfg", [QR(collisions=7), QR(budget_ratio=0.1), QR(budget_ratio=0.5, combine="add")])
def test_distinct_ids_get_distinct_quotient_remainder_pairs(cfg, make_kjt):
    n = 1000
    module = build_embedding(Schema((FeatureSpec("x", n),)), cfg, StoreSettings("reference"))
    rows = module.store_input(make_kjt({"x": [[i] for i in range(n)]})).to_dict()
    q, r = rows["x#q"].values(), rows["x#r"].values()
    tables = {t.name: t.rows for t in module.store.layout.tables}
    assert int(q.max()) < tables["x#q"] and int(r.max()) < tables["x#r"]
    assert len(set(zip(q.tolist(), r.tolist()))) == n


def test_out_of_range_ids_are_refused_or_read_the_oov_id(make_kjt):
    schema = Schema((FeatureSpec("x", 10),))
    with pytest.raises(IndexError, match=r"feature 'x': id 10 is outside \[0, 10\)"):
        build_embedding(schema, QR(), StoreSettings("reference"))(make_kjt({"x": [[3], [10]]}))
    with pytest.raises(IndexError, match=r"id -1 is outside"):
        build_embedding(schema, QR(), StoreSettings("reference"))(make_kjt({"x": [[-1], [2]]}))
    module = build_embedding(schema, QR(oov="row", collisions=4), StoreSettings("reference"))
    assert [t.rows for t in module.store.layout.tables] == [3, 4]  # 11 ids: 10 and the OOV id
    with torch.no_grad():
        out = module(make_kjt({"x": [[-1], [10], [10**12], [9], [3]]})).pooled[:, 0]
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
    assert not torch.equal(out[0], out[3]) and not torch.equal(out[0], out[4])


def test_mult_starts_with_a_full_tables_spread():
    """Both factors U(-b, b) with b = sqrt(3 init_std): products have std init_std, where
    the authors' U(sqrt(1/n), 1) (a lower bound by mistake) would be all positive."""
    cfg = QR(dim=16, collisions=200, init_std=0.02)
    module = build_embedding(Schema((FeatureSpec("x", 40_000),)), cfg, StoreSettings("reference"))
    w = module.store.table_weights()
    assert float(w["x#q"].min()) < 0 < float(w["x#q"].max())
    products = w["x#q"][torch.arange(200).repeat(200)] * w["x#r"][torch.arange(200).repeat_interleave(200)]
    assert float(products.std()) == pytest.approx(0.02, rel=0.1)


def test_collisions_for_a_number_of_rows():
    for n in (1, 2, 3, 10, 97, 1000, 123_457):
        assert fewest_rows(n) == min(qr_rows(n, m) for m in range(1, n + 1))
        for rows in (fewest_rows(n), fewest_rows(n) + 5, n // 3 + 10, n + 1):
            if rows >= fewest_rows(n):
                m = collisions_for(n, rows)
                assert qr_rows(n, m) <= rows and (m == 1 or qr_rows(n, m - 1) > rows)


@pytest.mark.parametrize("combine", ["mult", "add", "concat"])
def test_qr_budget_ratio(combine):
    module = build_embedding(BIG, QR(dim=16, combine=combine, budget_ratio=0.1), StoreSettings("reference"))
    full = full_bytes(BIG, 16)
    assert 0.05 * full <= module.memory().bytes <= 0.1 * full


def test_qr_budget_below_the_minimum_is_refused():
    with pytest.raises(ValueError, match=r"QR: budget_ratio=0\.001 is below the smallest configuration"):
        build_embedding(BIG, QR(dim=16, budget_ratio=0.001), StoreSettings("reference"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"combine": "dot"}, r"QR\.combine must be one of \('mult', 'add', 'concat'\), got 'dot'"),
        ({"combine": "concat", "dim": 12}, r"QR\.dim=12 must be a multiple of 8 with combine='concat'"),
        ({"oov": "hash"}, r"QR\.oov must be one of \('error', 'row'\), got 'hash'"),
        ({"collisions": 0}, r"QR\.collisions must be >= 1, got 0"),
    ],
)
def test_qr_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QR(**kwargs)
