"""Multi-head self-attention over a sample's feature fields, on the layout of one projection.

`field_self_attention(qkv, scale)` takes the output of one Linear(in, 3 * H * d) viewed as
qkv [B, F, 3, H, d] and returns softmax(q k^T * scale) v as [B, F, H, d], which views as the
next layer's [B, F, H * d] without a copy.

Two paths, the same values:
- on the CPU, for float32, F <= 64 fields and heads 4, 8, 16 or 32 wide, the C++ kernel of
  recemb/native/attention.cpp (forward and backward; one (sample, head) problem at a time,
  held in cache, vector lanes over 16 query fields so that the softmax needs no sums across
  lanes). CTR attention is many tiny problems (F ~ 20-60, d ~ 8), where torch's
  scaled_dot_product_attention spends most of its time on set-up and on the permutes around
  it: at batch 4096, 2 heads of 8, one thread, forward and backward through autograd took
  17.8 ms against SDPA's 118 ms at 26 fields, 33.5 ms against 192 ms at 39 (one run);
- everywhere else (GPU, other dtypes or sizes, RECEMB_NATIVE=0, no compiler), torch's
  scaled_dot_product_attention.
The kernel's backward is not itself differentiable (gradients of gradients need
RECEMB_NATIVE=0).
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from recemb import native

MAX_FIELDS = 64  # the kernel's compile-time field counts go up to 64
HEAD_WIDTHS = (4, 8, 16, 32)  # and its head widths


def field_self_attention(qkv: Tensor, scale: float) -> Tensor:
    """qkv [B, F, 3, H, d] -> attention output [B, F, H, d], scores scaled by `scale`."""
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"qkv must be [B, F, 3, H, d], got shape {tuple(qkv.shape)}")
    kernel = _kernel_for(qkv)
    if kernel is not None:
        return _NativeFieldAttention.apply(qkv, scale, kernel)
    return sdpa_field_attention(qkv, scale)


def sdpa_field_attention(qkv: Tensor, scale: float) -> Tensor:
    """The torch path: scaled_dot_product_attention on [B, H, F, d] views."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, F, d]
    return F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2)  # [B, F, H, d]


def _kernel_for(qkv: Tensor) -> ModuleType | None:
    """The native kernel when it takes this input and is built, else None."""
    fits = (
        qkv.device.type == "cpu"
        and qkv.dtype == torch.float32
        and 1 <= qkv.shape[1] <= MAX_FIELDS
        and qkv.shape[4] in HEAD_WIDTHS
        and qkv.numel() > 0
    )
    return native.load("attention") if fits else None


class _NativeFieldAttention(torch.autograd.Function):
    """The kernel's forward and backward. Backward recomputes the softmax from each score
    row's log-sum-exp (saved, [B, H, F]) instead of saving [B, H, F, F] probabilities."""

    @staticmethod
    def forward(ctx, qkv: Tensor, scale: float, kernel: ModuleType) -> Tensor:  # type: ignore[override]
        qkv = qkv.contiguous()
        out, lse = kernel.forward(qkv, scale)
        ctx.save_for_backward(qkv, lse)
        ctx.scale, ctx.kernel = scale, kernel
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        qkv, lse = ctx.saved_tensors
        return ctx.kernel.backward(grad_out.float().contiguous(), qkv, lse, ctx.scale), None, None
