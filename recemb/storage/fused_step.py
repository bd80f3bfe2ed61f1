"""The TBE store's training lookup on the CPU with row-wise Adagrad: fbgemm's forward kernel
and recemb's native optimizer step (recemb/native/rowwise_adagrad.cpp) in place of fbgemm's
CPU backward.

Same formula, same state, same layout: fbgemm's exact row-wise Adagrad, updating the TBE
module's own weights and momentum in backward, so checkpoints, torchrec interchange and
fbgemm's path (taken where the kernel is not built, or with RECEMB_NATIVE=0) all see one
store. Only the order in which a row's duplicate gradients are summed differs (float
rounding). Why: fbgemm's CPU backward sorts every lookup of the batch, a cost per lookup
that a smaller table does not reduce; the native step sums each feature's lookups in a
small hash table that stays in L1, then merges features that share a table.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

if TYPE_CHECKING:
    from recemb.storage.tbe import TBEStore


class RowwiseAdagradLookup(torch.autograd.Function):
    """forward: [B, total_D] pooled rows; backward: the optimizer step, no gradient out.

    `anchor` is TBE's placeholder parameter (requires grad), so that autograd calls backward;
    indices are each feature's own table's rows, as `TBEStore._lookup_no_grad` takes them."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, anchor: Tensor, indices: Tensor, offsets: Tensor, store: TBEStore, kernel: ModuleType
    ) -> Tensor:
        indices, offsets = indices.long(), offsets.long()
        ctx.save_for_backward(indices, offsets)
        ctx.store, ctx.kernel = store, kernel
        return store._lookup_no_grad(indices, offsets)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple[None, ...]:  # type: ignore[override]
        indices, offsets = ctx.saved_tensors
        ctx.store._rowwise_adagrad_step(ctx.kernel, grad_output.float().contiguous(), indices, offsets)
        return None, None, None, None, None
