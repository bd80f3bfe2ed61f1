"""Interaction layers that more than one model uses: the first-order (linear) term and the
factorization machine's second-order term (Rendle, ICDM 2010)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FirstOrder(nn.Module):
    """The linear term of a CTR model: bias + sum_f w(id_f) + <w_dense, x_dense>.

    The per-id weight w(id_f) is read off the field's embedding, w(id_f) = <u_f, e_f(id)>
    with one learned vector u_f per field, instead of from a second, 1-wide table: a table
    of scalars would need its own kind in every table file, and fbgemm's TBE wants widths
    in multiples of 4. The weights then live in the span of the embedding (rank-D
    constrained) and share its rows; for a pooled bag (mean or sum) the term is the same
    pooling of its ids' weights, as in the paper models, because u_f is linear.
    [B, F, D], [B, n_dense] -> [B].
    """

    def __init__(self, n_fields: int, dim: int, n_dense: int) -> None:
        super().__init__()
        self.field_vectors = nn.Parameter(torch.randn(n_fields, dim) * 0.01)  # u_f
        self.dense = nn.Linear(n_dense, 1) if n_dense else None
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, fields: Tensor, dense: Tensor) -> Tensor:
        out = torch.einsum("bfd,fd->b", fields, self.field_vectors) + self.bias  # [B]
        if self.dense is not None:
            out = out + self.dense(dense).squeeze(1)
        return out


def fm_second_order(fields: Tensor) -> Tensor:
    """sum_{i<j} <v_i, v_j> over fields, by the identity 0.5 * ((sum v)^2 - sum v^2)
    summed over D: O(F D) instead of O(F^2 D). [B, F, D] -> [B]."""
    square_of_sum = fields.sum(1).square()  # [B, D]
    sum_of_squares = fields.square().sum(1)  # [B, D]
    return 0.5 * (square_of_sum - sum_of_squares).sum(1)
