"""Masks the searching kinds share: a hard step with a straight-through gradient (OptEmbed's
row pruning) and per-sample width masks (OptEmbed's supernet)."""

from __future__ import annotations

import torch
from torch import Tensor

WIDTH_STEP = 4  # candidate widths are multiples of 4: the TBE store's and the int8 export's


class _BinaryStep(torch.autograd.Function):
    """Forward 1[x > 0]; backward the long-tailed estimator of Dynamic Sparse Training (Liu et
    al., ICLR 2020), which OptEmbed uses: grad · (2 − 4|x|) for |x| ≤ 0.4, grad · 0.4 for
    0.4 < |x| ≤ 1, 0 beyond. It is the derivative of a smooth surrogate of the step (see
    `surrogate_step`), so the gradient is that of a soft step while the forward is hard."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * step_slope(x)


def step_slope(x: Tensor) -> Tensor:
    """The estimator's derivative at x (the slope backward multiplies by)."""
    a = x.abs()
    return torch.where(a <= 0.4, 2 - 4 * a, torch.where(a <= 1, torch.full_like(a, 0.4), torch.zeros_like(a)))


def binary_step(x: Tensor) -> Tensor:
    """1[x > 0] with the long-tailed straight-through gradient."""
    return _BinaryStep.apply(x)


def surrogate_step(x: Tensor) -> Tensor:
    """The smooth function whose derivative `binary_step`'s backward uses: 1/2 at 0, odd about
    (0, 1/2), 2x − 2x² up to 0.4, then slope 0.4 up to 1, then flat (for checking the estimator)."""
    a = x.abs()
    inner = 2 * a - 2 * a * a
    rise = torch.where(a <= 0.4, inner, 0.48 + 0.4 * (a.clamp(max=1.0) - 0.4))
    return 0.5 + torch.sign(x) * rise


def width_choices(dim: int) -> list[int]:
    """Candidate widths: 4, 8, ..., dim."""
    return list(range(WIDTH_STEP, dim + 1, WIDTH_STEP))


def width_mask(widths: Tensor, dim: int) -> Tensor:
    """[..., dim] float: 1 on the first widths[...] columns."""
    return (torch.arange(dim, device=widths.device) < widths.unsqueeze(-1)).float()


def sample_widths(batch: int, tables: int, dim: int, seed: int) -> Tensor:
    """[B, T] widths drawn uniformly from width_choices(dim), a pure function of `seed`."""
    gen = torch.Generator().manual_seed(seed)
    choices = len(width_choices(dim))
    return (torch.randint(0, choices, (batch, tables), generator=gen) + 1) * WIDTH_STEP
