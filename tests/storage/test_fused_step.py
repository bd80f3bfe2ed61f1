"""The TBE store's native row-wise Adagrad step (recemb/storage/fused_step.py) against
fbgemm's own CPU backward, which it replaces: the same weights and momentum after training,
on layouts with merged tables, several keys per table, bags, sequences and duplicate ids.
(tests/storage/test_store_equivalence.py compares both paths' store with the reference.)"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
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
    columns, starts = torch.tensor([0, 4], dtype=torch.int32), torch.tensor([0])
    ids, offsets = torch.tensor([1, 2]), torch.tensor([0, 1, 2])
    with pytest.raises(RuntimeError, match="indices must be a contiguous CPU tensor of Long, got Int"):
        KERNEL.step(grad, ids.int(), offsets, columns, starts, starts, weights, state, 0.1, 1e-8)
    with pytest.raises(RuntimeError, match=r"offsets \[T \* B \+ 1\]"):
        KERNEL.step(grad, ids, offsets[:2], columns, starts, starts, weights, state, 0.1, 1e-8)


def reference_step(grad, ids, offsets, columns, weight_starts, state_starts, weights, state, lr, eps):
    """Row-wise Adagrad in plain PyTorch, on the kernel's inputs: each distinct row's
    gradient summed over every bag (of every feature) that read it, then one step per row."""
    T, B = len(weight_starts), grad.shape[0]
    sums: dict[int, tuple[int, Tensor]] = {}  # state index -> (first weight, summed gradient)
    for t in range(T):
        lo, hi = int(columns[t]), int(columns[t + 1])
        for b in range(B):
            for i in range(int(offsets[t * B + b]), int(offsets[t * B + b + 1])):
                key, row = int(state_starts[t] + ids[i]), int(ids[i])
                start, total = sums.get(key, (int(weight_starts[t]) + row * (hi - lo), torch.zeros(hi - lo)))
                sums[key] = (start, total + grad[b, lo:hi])
    for key, (start, g) in sums.items():
        state[key] += (g * g).mean()
        weights[start : start + len(g)] -= lr * g / (state[key].sqrt() + eps)


def shared_tables_case(batch: int, seed: int) -> tuple[tuple[Tensor, ...], Tensor, Tensor, list[int], dict]:
    """Five features over three tables: A read by features 0, 2 and 4 (so rows meet across
    features), B (width 12: no width-specialised loop) by feature 1, C by feature 3, whose
    bags are all empty. `batch` samples of 0-3 ids: hot rows repeat within and across
    features. Returns the step's inputs up to the weights, the weights, the state, the ids
    and the tables' first rows in the state."""
    gen = torch.Generator().manual_seed(seed)
    rows = {"A": 50, "B": 700, "C": 9}
    width = {"A": 16, "B": 12, "C": 4}
    tables = ["A", "B", "A", "C", "A"]  # feature t reads tables[t]
    weight_base = {"A": 0, "B": 50 * 16, "C": 50 * 16 + 700 * 12}
    state_base = {"A": 0, "B": 50, "C": 750}
    ids, offsets = [], [0]
    for table in tables:
        for _ in range(batch):
            count = 0 if table == "C" else int(torch.randint(0, 4, (), generator=gen))
            ids += torch.randint(0, rows[table], (count,), generator=gen).tolist()
            offsets.append(len(ids))
    columns = torch.tensor([0, *torch.tensor([width[t] for t in tables]).cumsum(0).tolist()], dtype=torch.int32)
    grad = torch.randn(batch, int(columns[-1]), generator=gen)
    weight_starts = torch.tensor([weight_base[t] for t in tables])
    state_starts = torch.tensor([state_base[t] for t in tables])
    weights = torch.randn(50 * 16 + 700 * 12 + 9 * 4, generator=gen)
    state = torch.rand(759, generator=gen)
    inputs = (grad, torch.tensor(ids), torch.tensor(offsets), columns, weight_starts, state_starts)
    return inputs, weights, state, ids, {"tables": tables, "state_base": state_base}


@needs_kernel
def test_the_step_equals_a_plain_reference_on_shared_tables_and_odd_widths():
    """The kernel on shared_tables_case's 300 samples against `reference_step`."""
    args, weights, state, ids, info = shared_tables_case(300, 11)
    B, offsets = 300, args[2].tolist()
    expected_w, expected_s = weights.clone(), state.clone()
    initial_state = state.clone()
    KERNEL.step(*args, weights, state, 0.1, 1e-8)
    reference_step(*args, expected_w, expected_s, 0.1, 1e-8)
    assert_close(state, expected_s)
    assert_close(weights, expected_w)
    read = torch.zeros(759, dtype=torch.bool)
    for t, table in enumerate(info["tables"]):
        rows = torch.tensor(ids[offsets[t * B] : offsets[(t + 1) * B]], dtype=torch.long)
        read[info["state_base"][table] + rows] = True
    assert torch.equal(state != initial_state, read)  # every row read took a step; no other did


@needs_kernel
def test_the_step_gives_the_same_bits_on_any_thread_count():
    """Threads take whole features (passes 1 and 3), so 1 and 3 threads agree bit for bit.
    4,000 samples: about 24k lookups, past the size where the step goes parallel."""
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            args, weights, state, _, _ = shared_tables_case(4000, 4)
            KERNEL.step(*args, weights, state, 0.1, 1e-8)
            results.append((weights, state))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
