"""Quotient-remainder embeddings against a plain-PyTorch version of their formula (values and
gradients), distinct (q, r) pairs for distinct ids, out-of-range ids, init and budgets."""

from __future__ import annotations

import pytest
import torch
from kind_formula import BIG, SCHEMA, check_formula, pool, sgd

from recemb.features import FeatureSpec, Schema
from recemb.storage import STORES, StoreSettings
from recemb.tables import QR, build_embedding
from recemb.tables.budget import full_bytes
from recemb.tables.qr import collisions_for, fewest_rows, qr_rows


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
