"""Optimizers fused into the embedding backward, and their plain-PyTorch reference updates.

The formulas are fbgemm's "exact" ones: the gradients of a row's duplicates in a batch are
summed first, then only the rows seen in the batch are updated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

OPTIMIZERS: tuple[str, ...] = ("sgd", "adagrad", "rowwise_adagrad", "adam")


@dataclass(frozen=True)
class EmbeddingOptimizer:
    """Settings of the optimizer that updates embedding rows inside backward."""

    name: str = "rowwise_adagrad"
    lr: float = 0.05
    eps: float = 1e-8
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0

    # state tensors per row, as a multiple of (1 for per-row scalars, dim for per-element)
    _STATE: ClassVar[dict[str, tuple[str, ...]]] = {
        "sgd": (),
        "adagrad": ("elementwise",),
        "rowwise_adagrad": ("rowwise",),
        "adam": ("elementwise", "elementwise"),
    }

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"EmbeddingOptimizer.name must be one of {OPTIMIZERS}, got {self.name!r}")
        if not self.lr > 0:
            raise ValueError(f"EmbeddingOptimizer.lr must be > 0, got {self.lr}")
        for beta in ("beta1", "beta2"):
            if not 0 <= getattr(self, beta) < 1:
                raise ValueError(f"EmbeddingOptimizer.{beta} must be in [0, 1), got {getattr(self, beta)}")
        if not self.eps > 0:
            raise ValueError(f"EmbeddingOptimizer.eps must be > 0, got {self.eps}")
        if self.weight_decay != 0 and self.name != "adam":
            raise ValueError(
                f"EmbeddingOptimizer.weight_decay={self.weight_decay} is only supported with adam; "
                f"got name={self.name!r}"
            )

    def state_shapes(self, rows: int, dim: int) -> list[tuple[int, ...]]:
        """Shapes of the optimizer state of one table (momentum1, momentum2, ...)."""
        return [(rows, dim) if kind == "elementwise" else (rows,) for kind in self._STATE[self.name]]

    def state_params(self, rows: int, dim: int) -> int:
        return sum(int(torch.Size(s).numel()) for s in self.state_shapes(rows, dim))


@torch.no_grad()
def reference_update(
    opt: EmbeddingOptimizer, weight: Tensor, grad: Tensor, rows: Tensor, state: list[Tensor], step: int
) -> None:
    """Update `weight[rows]` in place from the summed `grad` [R, D] of those rows."""
    g = grad[rows]
    w = weight[rows]
    if opt.name == "sgd":
        w -= opt.lr * g
    elif opt.name == "adagrad":
        state[0][rows] += g * g
        w -= opt.lr * g / (state[0][rows].sqrt() + opt.eps)
    elif opt.name == "rowwise_adagrad":
        state[0][rows] += (g * g).mean(dim=1)
        w -= opt.lr * g / (state[0][rows].sqrt() + opt.eps).unsqueeze(1)
    else:  # adam, with decoupled-from-nothing L2 added to the update as fbgemm does
        m, v = state
        m[rows] = opt.beta1 * m[rows] + (1 - opt.beta1) * g
        v[rows] = opt.beta2 * v[rows] + (1 - opt.beta2) * g * g
        m_hat = m[rows] / (1 - opt.beta1**step)
        v_hat = v[rows] / (1 - opt.beta2**step)
        w -= opt.lr * (m_hat / (v_hat.sqrt() + opt.eps) + opt.weight_decay * w)
    weight[rows] = w
