"""The TBE store's native row-wise Adagrad step (recemb/storage/fused_step.py) against
fbgemm's own CPU backward, which it replaces: the same weights and momentum after training,
on layouts with merged tables, several keys per table, bags, sequences and duplicate ids.
(tests/storage/test_store_equivalence.py compares both paths' store with the reference.)"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from recemb import native
from recemb.storage import EmbeddingOptimizer, StoreSettings, build_store, fused_step
from recemb.storage.tbe import TBEStore
from tests.storage.test_store_equivalence import LAYOUTS

KERNEL = native.load("rowwise_adagrad")
needs_kernel = pytest.mark.skipif(KERNEL is None, reason="native row-wise Adagrad step not built on this machine")


def tbe_store(layout, opt: str = "rowwise_adagrad") -> TBEStore:
    return build_store(layout, StoreSettings("tbe", EmbeddingOptimizer(opt, lr=0.1), seed=3))


@needs_kernel
@pytest.mark.parametrize("name", ["mixed", "interleaved", "multi_hot"])
def test_native_step_equals_fbgemms_backward(name, monkeypatch, make_kjt, make_bags, specs_of):
    layout, multi = LAYOUTS[name]
    native_store, fbgemm_store = tbe_store(layout), tbe_store(layout)
    monkeypatch.setattr(fbgemm_store, "_step_kernel", lambda: None)
    calls = []
    apply = fused_step.RowwiseAdagradLookup.apply
    monkeypatch.setattr(fused_step.RowwiseAdagradLookup, "apply", lambda *a: calls.append(1) or apply(*a))
    gen = torch.Generator().manual_seed(5)
    for _ in range(5):
        # 40 samples over tables of 4-12 rows: every batch repeats rows within and across keys
        kjt = make_kjt(make_bags(gen, specs_of(layout, multi), 40), torch.int64)
        weights = None
        for store in (native_store, fbgemm_store):
            out = store(kjt)
            weights = torch.randn(out.shape, generator=gen) if weights is None else weights
            (out * weights).sum().backward()
    assert len(calls) == 5  # the native store only
    for (name_a, a), (_, b) in zip(native_store.table_weights().items(), fbgemm_store.table_weights().items()):
        assert_close(a, b, msg=lambda m, t=name_a: f"table {t!r}: {m}")
    for (name_a, a), (_, b) in zip(native_store.optimizer_states().items(), fbgemm_store.optimizer_states().items()):
        assert_close(a[0], b[0], msg=lambda m, t=name_a: f"momentum of table {t!r}: {m}")


@pytest.mark.parametrize("opt", ["sgd", "adagrad"])
def test_other_optimizers_keep_fbgemms_backward(opt):
    store = tbe_store(LAYOUTS["single"][0], opt)
    assert store._step_kernel() is None


@needs_kernel
def test_the_step_refuses_inputs_of_the_wrong_kind():
    """One feature of width 4, 2 samples; ids of the wrong dtype, offsets of the wrong length."""
    grad, weights, state = torch.zeros(2, 4), torch.zeros(40), torch.zeros(10)
    columns, starts = torch.tensor([0, 4]), torch.tensor([0])
    ids, offsets = torch.tensor([1, 2]), torch.tensor([0, 1, 2])
    with pytest.raises(RuntimeError, match="indices must be a contiguous CPU tensor of Long, got Int"):
        KERNEL.step(grad, ids.int(), offsets, columns, starts, starts, weights, state, 0.1, 1e-8)
    with pytest.raises(RuntimeError, match=r"offsets \[T \* B \+ 1\]"):
        KERNEL.step(grad, ids, offsets[:2], columns, starts, starts, weights, state, 0.1, 1e-8)
