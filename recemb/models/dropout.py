"""Dropout whose mask is drawn for the global batch, so sharded training drops what one
process would.

torch's Dropout draws a mask for the rows it is given. Under `recemb train --nproc N` every
rank starts from the same seed and holds 1/N of each global batch, so each rank would draw
the mask of the first rows, the same on every rank, and no rank the one process's masks of
its rows. Here the mask is drawn for all N shares (the same draws on every rank) and each
rank keeps its own (recemb.distributed.share); in one process that is torch's dropout
draw, bernoulli over the batch, scaled by 1/(1 - p).
"""

from __future__ import annotations

from torch import Tensor, nn

from recemb.distributed.share import batch_share


class BatchDropout(nn.Module):
    """nn.Dropout(p) with the mask of the global batch: x [B, ...] -> x [B, ...]."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        index, count = batch_share()
        rows = x.shape[0]
        keep = x.new_empty((rows * count, *x.shape[1:])).bernoulli_(1 - self.p)  # [B * count, ...]
        return x * keep[index * rows : (index + 1) * rows].div_(1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
