"""The fused store: every table in one fbgemm table-batched embedding (TBE) module.

The only library file that builds fbgemm's training TBE. What makes it faster than using
TBE the plain way (measured by `recemb bench lookup`):
- tables of the same width are merged into one TBE table with row offsets: one table to
  look up, and the exact per-row optimizers give identical results;
- TBE's own bounds check is off; the store (or a kind whose ids are in range by
  construction) checks ids once before the kernel, so bad ids are still refused;
- on the CPU, row-wise Adagrad runs as recemb's own native step (fused_step.py) in place of
  fbgemm's backward, which sorts every lookup of the batch: with it, a train step on one
  merged table took 1.4-2.1x that of a table per feature (two runs on an AMD EPYC).
Sequence keys become max_len virtual features of 0 or 1 id each, so pooled and sequence
lookups of the same table go through the same single call.
On the CPU the weights and the optimizer state sit on 2 MiB pages (see `_huge_page_zeros`),
and lookups without autograd call TBE's forward kernel directly (see `_lookup_no_grad`).
That direct path and the native step take the keys in the caller's order; only fbgemm's
module (GPU, other optimizers) needs them grouped by merged table, with a permutation of
the input and a gather of the output columns (for hash_embedding's two widths those took
half of its forward).
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import sys
from itertools import accumulate
from types import ModuleType

import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode, EmbeddingLocation, PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    ComputeDevice,
    SplitTableBatchedEmbeddingBagsCodegen,
)
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb import native
from recemb.storage.base import EmbeddingStore, length_per_key
from recemb.storage.fused_step import RowwiseAdagradLookup
from recemb.storage.layout import StoreLayout
from recemb.storage.optim import EmbeddingOptimizer

log = logging.getLogger(__name__)

_FBGEMM_OPTIMIZER = {
    "sgd": EmbOptimType.EXACT_SGD,
    "adagrad": EmbOptimType.EXACT_ADAGRAD,
    "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
    "adam": EmbOptimType.ADAM,
}
TBE_DIM_MULTIPLE = 4


class TBEStore(EmbeddingStore):
    def __init__(
        self,
        layout: StoreLayout,
        optimizer: EmbeddingOptimizer,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(layout, optimizer, seed)
        device = torch.device(device)
        on_gpu = device.type == "cuda"
        if optimizer.name == "adam" and not on_gpu:
            raise ValueError(
                "EmbeddingOptimizer.name='adam' is not supported by fbgemm's TBE on the CPU; "
                "use sgd, adagrad or rowwise_adagrad, or the reference store"
            )
        for t in layout.tables:
            if t.dim % TBE_DIM_MULTIPLE:
                raise ValueError(
                    f"table {t.name!r} has dim={t.dim}; the TBE store needs dims that are multiples of "
                    f"{TBE_DIM_MULTIPLE} (pick dim={t.dim + TBE_DIM_MULTIPLE - t.dim % TBE_DIM_MULTIPLE} "
                    f"or the reference store)"
                )
        # merged TBE table per distinct dim; each physical table is a row range of one
        dims = sorted({t.dim for t in layout.tables})
        self._place: dict[str, tuple[int, int]] = {}  # table -> (merged index, first row)
        merged_rows = [0] * len(dims)
        for t in layout.tables:
            m = dims.index(t.dim)
            self._place[t.name] = (m, merged_rows[m])
            merged_rows[m] += t.rows
        self._tbe_layout, order = self._grouped_by_merged_table(layout)
        self._key_order = order if order != sorted(order) else None
        tbe_columns = self._tbe_layout.column_slices()
        column_order = [c for key in layout.keys for c in range(tbe_columns[key].start, tbe_columns[key].stop)]
        self.register_buffer("_column_order", torch.tensor(column_order, dtype=torch.int64), persistent=False)
        # one virtual feature per pooled key, max_len per sequence key
        feature_table_map, row_offsets = [], []
        for lk in self._tbe_layout.lookups:
            m, first = self._place[lk.table]
            feature_table_map += [m] * lk.slots
            row_offsets += [first] * lk.slots
        self.register_buffer("_row_offsets", torch.tensor(row_offsets, dtype=torch.int64), persistent=False)
        self._needs_offsets = any(row_offsets)
        # per-value row offsets for the last length_per_key seen: a fixed batch of
        # single-valued features repeats it every step, and this saves a repeat_interleave
        self._offsets_cache: tuple[tuple[int, ...], Tensor] | None = None
        self._has_sequences = any(lk.pooling == "none" for lk in layout.lookups)
        self._has_means = any(lk.pooling == "mean" for lk in layout.lookups)
        location, compute = (
            (EmbeddingLocation.DEVICE, ComputeDevice.CUDA) if on_gpu else (EmbeddingLocation.HOST, ComputeDevice.CPU)
        )
        host_buffers = None if on_gpu else self._huge_page_buffers(merged_rows, dims, optimizer)
        self.tbe = SplitTableBatchedEmbeddingBagsCodegen(
            [(rows, dim, location, compute) for rows, dim in zip(merged_rows, dims)],
            feature_table_map=feature_table_map,
            optimizer=_FBGEMM_OPTIMIZER[optimizer.name],
            learning_rate=optimizer.lr,
            eps=optimizer.eps,
            beta1=optimizer.beta1,
            beta2=optimizer.beta2,
            weight_decay=optimizer.weight_decay,
            pooling_mode=PoolingMode.SUM,
            bounds_check_mode=BoundsCheckMode.NONE,
            device=device,
            preallocated_host_buffers=host_buffers,
        )
        self.load_table_weights(self.initial_weights())
        # The direct path (CPU only): fbgemm's forward kernel called as `_lookup_no_grad`
        # does, and the native step. Both take each virtual feature's table by offsets, in
        # any order, so they see the layout's own order: no key permutation of the input and
        # no column gather of the output, which fbgemm's module (its backward) needs.
        self._direct_forward = not on_gpu
        self._native_step = self._direct_forward and optimizer.name == "rowwise_adagrad"
        direct = self._direct_slots(layout, feature_table_map) if self._direct_forward else {}
        for name in ("weights_offsets", "state_offsets", "d_offsets", "rows_cumsum"):
            self.register_buffer(f"_slot_{name}", direct.get(name), persistent=False)

    def _direct_slots(self, layout: StoreLayout, feature_table_map: list[int]) -> dict[str, Tensor]:
        """Per virtual feature of the layout's own order (a sequence key is max_len of them):
        where its table starts in TBE's weights (floats) and momentum (rows), its output
        columns (D_offsets, int32 as fbgemm and the native step take them)
        and the cumsum of its tables' rows (fbgemm's bounds check per virtual feature)."""
        any_feature = {m: feature_table_map.index(m) for m in set(feature_table_map)}  # merged table -> a TBE feature
        tables = [layout.table(lk.table) for lk in layout.lookups for _ in range(lk.slots)]
        merged = [self._place[t.name] for t in tables]  # (merged index, first row)
        features = torch.tensor([any_feature[m] for m, _ in merged], dtype=torch.int64)
        first_rows = torch.tensor([first for _, first in merged], dtype=torch.int64)
        dims = torch.tensor([t.dim for t in tables], dtype=torch.int64)
        d_offsets = torch.tensor([0, *accumulate(t.dim for t in tables)], dtype=self.tbe.D_offsets.dtype)
        slots = {
            "weights_offsets": self.tbe.weights_offsets[features] + first_rows * dims,
            "d_offsets": d_offsets,
            "rows_cumsum": torch.tensor([0, *accumulate(t.rows for t in tables)], dtype=torch.int64),
        }
        if self._native_step:
            slots["state_offsets"] = self.tbe.momentum1_offsets[features] + first_rows
        return slots

    def _grouped_by_merged_table(self, layout: StoreLayout) -> tuple[StoreLayout, list[int]]:
        """The layout as TBE sees it, lookups sorted (stably) by merged table index, i.e. by
        ascending width, and that order as indices into `layout.lookups`.

        fbgemm's CPU backward needs both halves of that. Grouped: it updates a table once
        per run of consecutive features reading it, so a row read in two runs would get two
        optimizer steps instead of one on its summed gradient (only sgd is immune).
        Ascending: it takes a table's row count as the first nonzero step, from the table's
        first feature on, of a per-feature cumsum of row counts (TBE's hash_size_cumsum),
        which only grows when feature_table_map does. With a later (wider) merged table
        read first that step is negative, and row-wise Adagrad's fast path, taken by a
        merged table read by one feature, fails: "num of rows processed by adagrad: 0 does
        not match c_block size" (tests/storage/test_tbe_lookup_order.py). `lookup` puts
        the columns back in the layout's order."""
        order = sorted(range(len(layout.lookups)), key=lambda i: self._place[layout.lookups[i].table][0])
        return StoreLayout(layout.tables, tuple(layout.lookups[i] for i in order)), order

    @staticmethod
    def _huge_page_buffers(rows: list[int], dims: list[int], optimizer: EmbeddingOptimizer) -> dict[str, Tensor]:
        """TBE's host weights and first optimizer state (the rows gathered and updated at
        random), as zeroed buffers on 2 MiB pages, in TBE's layout: merged tables end to end."""
        buffers = {"weights": _huge_page_zeros(sum(r * d for r, d in zip(rows, dims)))}
        states = [optimizer.state_shapes(r, d) for r, d in zip(rows, dims)]
        if states and states[0]:  # every optimizer but sgd has a momentum1
            buffers["momentum1"] = _huge_page_zeros(sum(int(torch.Size(s[0]).numel()) for s in states))
        return buffers

    # -- lookup -----------------------------------------------------------------------
    def lookup(self, kjt: KeyedJaggedTensor) -> Tensor:
        batch = kjt.stride()
        kernel = self._step_kernel() if torch.is_grad_enabled() else None
        if self._direct_forward and (kernel is not None or not torch.is_grad_enabled()):
            out = self._direct_lookup(kjt, batch, kernel)  # [B, width], in the layout's order
            return out * self._mean_scale(kjt, batch, self.layout) if self._has_means else out
        layout = self._tbe_layout
        if self._key_order is not None:
            kjt = kjt.permute(self._key_order)  # keys grouped by merged table, as TBE sees them
        if self._has_sequences:
            indices, offsets, counts = self._expand_sequences(kjt, batch, layout)
        else:
            indices, offsets, counts = kjt.values(), kjt.offsets(), None
        indices = indices.long()
        if self._needs_offsets:
            if counts is None:
                indices = indices + self._value_row_offsets(length_per_key(kjt))
            else:
                indices = indices + torch.repeat_interleave(self._row_offsets, counts, output_size=indices.numel())
        out = self.tbe(indices, offsets.long())  # [B, width]
        if self._has_means:
            out = out * self._mean_scale(kjt, batch, layout)
        if self._key_order is not None:
            out = out.index_select(1, self._column_order)  # back to the layout's key order
        return out

    def _direct_lookup(self, kjt: KeyedJaggedTensor, batch: int, kernel: ModuleType | None) -> Tensor:
        """[B, width]: the direct path's forward; with `kernel` (the native step), one that
        trains in backward."""
        if self._has_sequences:
            indices, offsets, _ = self._expand_sequences(kjt, batch, self.layout)
        else:
            indices, offsets = kjt.values(), kjt.offsets()
        if kernel is None:
            return self._lookup_no_grad(indices, offsets)
        return RowwiseAdagradLookup.apply(self.tbe.placeholder_autograd_tensor, indices, offsets, self, kernel)

    def _lookup_no_grad(self, indices: Tensor, offsets: Tensor) -> Tensor:
        """[B, width] from TBE's CPU forward kernel, the one its module calls, given each
        virtual feature's own table as a weight offset: the ids need no row offsets added,
        and the module's per-call bookkeeping (for backward, caches, stats) is skipped.
        Without autograd nothing reads that bookkeeping. The kernel checks every id against
        its own table's rows (not the merged table's) and raises on a bad one."""
        return torch.ops.fbgemm.split_embedding_codegen_forward_cpu(
            self.tbe.weights_host,
            self._slot_weights_offsets,
            self._slot_d_offsets,
            self.tbe.total_D,
            self._slot_rows_cumsum,
            indices,
            offsets,
            PoolingMode.SUM.value,
            None,  # no per-sample weights
            self.tbe.output_dtype,
        )

    def _step_kernel(self) -> ModuleType | None:
        """The native row-wise Adagrad step (fused_step.py) where this store can use it and it
        is built, else None (fbgemm's backward)."""
        return native.load("rowwise_adagrad") if self._native_step else None

    def _rowwise_adagrad_step(self, kernel: ModuleType, grad_output: Tensor, indices: Tensor, offsets: Tensor) -> None:
        """The native step (fused_step.py's backward) on TBE's own weights and momentum, for
        the rows a lookup of (indices, offsets) read; grad_output [B, width], contiguous."""
        kernel.step(
            grad_output,
            indices,
            offsets,
            self._slot_d_offsets,
            self._slot_weights_offsets,
            self._slot_state_offsets,
            self.tbe.weights_host,
            self.tbe.momentum1_host,
            self.optimizer.lr,
            self.optimizer.eps,
        )

    def _value_row_offsets(self, per_key: list[int]) -> Tensor:
        """[nnz]: the first merged row of each value's table (keys' values end to end)."""
        counts = tuple(per_key)
        cached = self._offsets_cache
        if cached is None or cached[0] != counts or cached[1].device != self._row_offsets.device:
            repeats = torch.tensor(counts, device=self._row_offsets.device)
            cached = (counts, torch.repeat_interleave(self._row_offsets, repeats, output_size=sum(counts)))
            self._offsets_cache = cached
        return cached[1]

    @staticmethod
    def _expand_sequences(
        kjt: KeyedJaggedTensor, batch: int, layout: StoreLayout
    ) -> tuple[Tensor, Tensor, Tensor]:
        """TBE input where each sequence key is max_len features: feature j holds item j
        (kjt's keys in `layout`'s order)."""
        values, lengths = [], []
        for lk, jt in zip(layout.lookups, (kjt[k] for k in layout.keys)):
            if lk.pooling != "none":
                values.append(jt.values())
                lengths.append(jt.lengths())
                continue
            padded = torch.ops.fbgemm.jagged_1d_to_dense(jt.values(), jt.offsets(), lk.max_len, -1)  # [B, L]
            by_position = padded.t()  # [L, B]: virtual feature j, sample b
            present = by_position >= 0
            values.append(by_position[present])
            lengths.append(present.reshape(-1).to(jt.lengths().dtype))
        all_lengths = torch.cat(lengths)
        counts = all_lengths.view(-1, batch).sum(dim=1)
        return torch.cat(values), torch.ops.fbgemm.asynchronous_complete_cumsum(all_lengths), counts

    @staticmethod
    def _mean_scale(kjt: KeyedJaggedTensor, batch: int, layout: StoreLayout) -> Tensor:
        """[B, width]: 1/len on the columns of mean-pooled keys (empty bags stay 0), else 1
        (kjt's keys and the columns in `layout`'s order)."""
        lengths = kjt.lengths().view(len(layout.keys), batch)
        scale = torch.ones(batch, layout.width)
        for i, (key, cols) in enumerate(layout.column_slices().items()):
            if layout.lookup(key).pooling == "mean":
                scale[:, cols] = 1.0 / lengths[i].clamp(min=1).unsqueeze(1).float()
        return scale

    # -- weights and optimizer state ---------------------------------------------------
    def _table_view(self, tensors: list[Tensor], name: str) -> Tensor:
        m, first = self._place[name]
        return tensors[m][first : first + self.layout.table(name).rows]

    def table_weights(self) -> dict[str, Tensor]:
        merged = self.tbe.split_embedding_weights()
        return {t.name: self._table_view(merged, t.name).detach().clone() for t in self.layout.tables}

    @torch.no_grad()
    def load_table_weights(self, weights: dict[str, Tensor]) -> None:
        merged = self.tbe.split_embedding_weights()
        for t in self.layout.tables:
            self._table_view(merged, t.name).copy_(weights[t.name])

    def optimizer_states(self) -> dict[str, list[Tensor]]:
        merged = self.tbe.split_optimizer_states()  # per merged table: [state0, state1, ...]
        return {t.name: [self._table_view(list(s), t.name).clone() for s in zip(*merged)] for t in self.layout.tables}

    @torch.no_grad()
    def load_optimizer_states(self, states: dict[str, list[Tensor]]) -> None:
        merged = self.tbe.split_optimizer_states()
        for t in self.layout.tables:
            for i, per_table in enumerate(zip(*merged)):
                self._table_view(list(per_table), t.name).copy_(states[t.name][i])

    def fused_parameters(self) -> list[nn.Parameter]:
        return list(self.tbe.parameters())


HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14


def _huge_page_zeros(numel: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """A zeroed 1-D tensor on fresh private memory that starts on a 2 MiB boundary and is
    advised (MADV_HUGEPAGE) before anything touches it.

    Random row gathers miss the TLB less on 2 MiB pages (1.2-1.7x faster gathers measured
    here). The advice only shapes pages faulted in after it: advising a tensor torch has
    already filled leaves it on 4 KiB pages until khugepaged, much later if ever, collapses
    them; and a page is only huge where the mapping covers a whole aligned 2 MiB. Where
    madvise is unavailable this is a plain zeroed tensor.
    """
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if not sys.platform.startswith("linux") or nbytes < HUGE_PAGE:
        return torch.zeros(numel, dtype=dtype)
    # anonymous private memory is zero-filled by the kernel; MAP_SHARED would be shmem,
    # which has its own (usually off) huge-page switch
    memory = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = torch.frombuffer(memory, dtype=torch.uint8)  # keeps `memory` alive
    skip = -raw.data_ptr() % HUGE_PAGE
    out = raw[skip : skip + nbytes].view(dtype)
    advised = -(-nbytes // HUGE_PAGE) * HUGE_PAGE  # whole huge pages, inside the mapping
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.madvise(ctypes.c_void_p(out.data_ptr()), ctypes.c_size_t(advised), ctypes.c_int(MADV_HUGEPAGE)):
            log.debug("madvise(MADV_HUGEPAGE) failed: errno %d", ctypes.get_errno())
    except (OSError, AttributeError):  # no libc madvise: nothing to gain
        log.debug("madvise(MADV_HUGEPAGE) unavailable")
    return out
