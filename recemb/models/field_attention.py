"""Multi-head self-attention over a sample's feature fields, on the layout of one projection.

`field_self_attention(qkv, scale)` takes the output of one Linear(in, 3 * H * d) viewed as
qkv [B, F, 3, H, d] and returns softmax(q k^T * scale) v as [B, F, H, d], which views as the
next layer's [B, F, H * d] without a copy. `projected_field_attention(x, weight, heads, scale)`
is the same attention over qkv = x weight^T (the projection's nn.Linear weight), where the
kernel makes each sample's qkv in cache: qkv is never written to memory nor kept for
backward, and the projection's two backward products run there too. At batch 4096, 26
fields, in = 16, 2 heads of 8, one thread, its forward and backward calls took 15.2 ms
against 22.4 ms for the qkv kernel with torch's projection products around it (one run).

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


def projected_field_attention(x: Tensor, weight: Tensor, heads: int, scale: float) -> Tensor:
    """x [B, F, in], weight [3 * heads * d, in] (an nn.Linear's, rows ordered (3, heads, d))
    -> field_self_attention of qkv = x weight^T viewed [B, F, 3, heads, d]: [B, F, heads, d]."""
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[1] != x.shape[2]:
        raise ValueError(
            f"x must be [B, F, in] and weight [3 * heads * d, in], "
            f"got shapes {tuple(x.shape)} and {tuple(weight.shape)}"
        )
    if heads < 1:
        raise ValueError(f"heads must be >= 1, got {heads}")
    if weight.shape[0] % (3 * heads):
        raise ValueError(f"weight's rows ({weight.shape[0]}) must be 3 * heads ({heads}) * d")
    batch, fields, _ = x.shape
    width = weight.shape[0] // (3 * heads)
    same_kind = weight.dtype == x.dtype and weight.device == x.device
    kernel = _kernel_for_shape(x, fields, width) if same_kind else None
    if kernel is not None:
        return _NativeProjectedFieldAttention.apply(x, weight, heads, scale, kernel)
    return field_self_attention(F.linear(x, weight).view(batch, fields, 3, heads, width), scale)


def _kernel_for(qkv: Tensor) -> ModuleType | None:
    """The native kernel when it takes this qkv [B, F, 3, H, d] and is built, else None."""
    return _kernel_for_shape(qkv, qkv.shape[1], qkv.shape[4])


def _kernel_for_shape(t: Tensor, fields: int, width: int) -> ModuleType | None:
    """The native kernel when it takes `fields` fields and heads `width` wide on t's device
    and dtype and is built, else None."""
    fits = (
        t.device.type == "cpu"
        and t.dtype == torch.float32
        and 1 <= fields <= MAX_FIELDS
        and width in HEAD_WIDTHS
        and t.numel() > 0
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


class _NativeProjectedFieldAttention(torch.autograd.Function):
    """The kernel's projected forward and backward: saves x, weight and lse, not qkv."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x: Tensor, weight: Tensor, heads: int, scale: float, kernel: ModuleType
    ) -> Tensor:
        x, weight = x.contiguous(), weight.contiguous()
        out, lse = kernel.projected_forward(x, weight, heads, scale)
        ctx.save_for_backward(x, weight, lse)
        ctx.heads, ctx.scale, ctx.kernel = heads, scale, kernel
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor, None, None, None]:  # type: ignore[override]
        x, weight, lse = ctx.saved_tensors
        dx, dw = ctx.kernel.projected_backward(grad_out.float().contiguous(), x, weight, lse, ctx.heads, ctx.scale)
        return dx, dw, None, None, None
