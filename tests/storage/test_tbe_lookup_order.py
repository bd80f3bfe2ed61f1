"""The TBE store serves lookups of different widths in any order the caller lists them.

Regression for fbgemm's CPU backward: it finds each TBE table's rows from a per-feature
cumulative sum that is only right when the features (lookups) reach the merged tables in
ascending table order. A layout whose first lookup read a wider table than a later one
made row-wise Adagrad crash ("num of rows processed by adagrad: 0 does not match c_block
size") and gave the other optimizers a wrong table size. Every order below must train
exactly like the reference store, and give its columns in the caller's order.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from recemb.storage import EmbeddingOptimizer, LookupSpec, StoreLayout, StoreSettings, TableSpec, build_store

OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad")
BATCH = 5
STEPS = 3

TABLES = (
    TableSpec("narrow", 7, 4),
    TableSpec("mid", 6, 8),
    TableSpec("mid_too", 5, 8),  # merged with "mid" inside TBE
    TableSpec("wide", 9, 12),
)
# name -> lookups, in the caller's order: (key, table, pooling, max_len)
ORDERS: dict[str, tuple[tuple[str, str, str, int], ...]] = {
    # the smallest case: a width-8 table read before a width-4 one
    "wide_then_narrow": (("m", "mid", "sum", 0), ("n", "narrow", "sum", 0)),
    "descending": (("w", "wide", "sum", 0), ("m", "mid", "sum", 0), ("n", "narrow", "sum", 0)),
    "wide_narrow_mid": (("w", "wide", "sum", 0), ("n", "narrow", "sum", 0), ("m", "mid", "sum", 0)),
    "narrow_wide_mid": (("n", "narrow", "sum", 0), ("w", "wide", "sum", 0), ("m", "mid", "sum", 0)),
    # a merged table of two physical tables, read first by a bag and a sequence
    "merged_first": (
        ("m", "mid", "mean", 0),
        ("h", "mid_too", "none", 3),
        ("n", "narrow", "sum", 0),
        ("w", "wide", "sum", 0),
    ),
    # one table read on either side of a wider one, the wider one read twice
    "interleaved": (
        ("w", "wide", "sum", 0),
        ("n", "narrow", "sum", 0),
        ("w2", "wide", "none", 2),
        ("n2", "narrow", "mean", 0),
    ),
}
MULTI_HOT = ("m", "n2")  # keys fed as bags of 0..4 ids; the others one id each


def layout_of(order: str) -> StoreLayout:
    """The layout of one order: its lookups, and only the tables they read."""
    lookups = tuple(LookupSpec(*lk) for lk in ORDERS[order])
    read = {lk.table for lk in lookups}
    return StoreLayout(tuple(t for t in TABLES if t.name in read), lookups)


def assert_same_tables(tbe, ref) -> None:
    """Equal weights and optimizer states, table by table."""
    for name, weight in ref.table_weights().items():
        assert_close(tbe.table_weights()[name], weight, msg=lambda m, name=name: f"weights of table {name!r}: {m}")
    for name, states in ref.optimizer_states().items():
        for got, want in zip(tbe.optimizer_states()[name], states, strict=True):
            assert_close(got, want, msg=lambda m, name=name: f"optimizer state of table {name!r}: {m}")


@pytest.mark.parametrize("opt", OPTIMIZERS)
@pytest.mark.parametrize("order", list(ORDERS))
def test_any_lookup_order_trains_like_the_reference(order, opt, make_kjt, make_bags, specs_of):
    layout = layout_of(order)
    optimizer = EmbeddingOptimizer(opt, lr=0.1)
    tbe, ref = (build_store(layout, StoreSettings(backend, optimizer)) for backend in ("tbe", "reference"))
    initial = ref.table_weights()
    gen = torch.Generator().manual_seed(list(ORDERS).index(order) * 7 + OPTIMIZERS.index(opt))
    multi = tuple(k for k in MULTI_HOT if k in layout.keys)
    for _ in range(STEPS):
        kjt = make_kjt(make_bags(gen, specs_of(layout, multi), BATCH))
        out_tbe, out_ref = tbe(kjt), ref(kjt)
        assert out_tbe.shape == (BATCH, layout.width)
        assert_close(out_tbe, out_ref)  # columns in the caller's key order
        w = torch.randn(out_ref.shape, generator=gen)
        (out_tbe * w).sum().backward()
        (out_ref * w).sum().backward()
        assert_same_tables(tbe, ref)
    moved = [name for name, weight in ref.table_weights().items() if not torch.equal(weight, initial[name])]
    assert sorted(moved) == sorted(t.name for t in layout.tables)  # every table was trained


def test_sgd_step_is_the_summed_gradient_when_the_wide_table_comes_first(make_kjt):
    """The same case by hand: with sgd at lr 1 a row moves by minus its summed gradient,
    so the update shows each lookup's gradient reached its own table's rows."""
    layout = layout_of("wide_then_narrow")
    kjt = make_kjt({"m": [[1], [1]], "n": [[2], [0]]})
    w = torch.randn(2, layout.width, generator=torch.Generator().manual_seed(3))
    for backend in ("tbe", "reference"):
        store = build_store(layout, StoreSettings(backend, EmbeddingOptimizer("sgd", lr=1.0)))
        before = store.table_weights()
        (store(kjt) * w).sum().backward()
        after = store.table_weights()
        mid, narrow = before["mid"].clone(), before["narrow"].clone()
        mid[1] -= w[0, :8] + w[1, :8]
        narrow[2] -= w[0, 8:]
        narrow[0] -= w[1, 8:]
        assert_close(after["mid"], mid, msg=lambda m, backend=backend: f"{backend}: {m}")
        assert_close(after["narrow"], narrow, msg=lambda m, backend=backend: f"{backend}: {m}")


@pytest.mark.parametrize("order", list(ORDERS))
def test_the_direct_path_and_fbgemms_module_agree_in_any_order(order, monkeypatch, make_kjt, make_bags, specs_of):
    """On the CPU, lookups without autograd (and row-wise Adagrad training) take the direct
    path in the caller's key order; fbgemm's module sees keys grouped by merged table and
    puts the columns back. Same store, same batch: the same output, column for column."""
    layout = layout_of(order)
    store = build_store(layout, StoreSettings("tbe", EmbeddingOptimizer("rowwise_adagrad", lr=0.1)))
    gen = torch.Generator().manual_seed(list(ORDERS).index(order))
    kjt = make_kjt(make_bags(gen, specs_of(layout, tuple(k for k in MULTI_HOT if k in layout.keys)), BATCH))
    with torch.no_grad():
        direct = store(kjt)
    trained_direct = store(kjt)  # the native step's forward, where it is built
    monkeypatch.setattr(store, "_step_kernel", lambda: None)
    module = store(kjt)
    assert module.grad_fn is not None and direct.grad_fn is None
    assert_close(direct, module, rtol=0, atol=0)
    assert_close(trained_direct.detach(), module.detach(), rtol=0, atol=0)
