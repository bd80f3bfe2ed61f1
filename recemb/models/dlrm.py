"""DLRM (Naumov et al., 2019): a bottom MLP maps dense features to an embedding-wide vector,
pairwise dot products among it and the field embeddings feed a top MLP.

Deviations: the top MLP ends in a plain linear layer (the model returns logits; the
reference applies the sigmoid inside). Without dense features there is no bottom MLP and
the top MLP reads the dot products among the fields alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.models.base import MLP, CTRModel
from recemb.tables.base import TableEmbedding


@dataclass(frozen=True)
class DLRMConfig:
    """The reference's Criteo Kaggle setting: bottom 512-256-64-D, top 512-256-1, all ReLU.
    `bottom_hidden` lists the bottom MLP's widths before its last layer, which is always D."""

    name: ClassVar[str] = "dlrm"
    bottom_hidden: tuple[int, ...] = (512, 256, 64)
    top_hidden: tuple[int, ...] = (512, 256)

    def __post_init__(self) -> None:
        for field in ("bottom_hidden", "top_hidden"):
            if any(w < 1 for w in getattr(self, field)):
                raise ValueError(f"{type(self).__name__}.{field} widths must be >= 1, got {getattr(self, field)}")


def dot_interaction(vectors: Tensor) -> Tensor:
    """<v_i, v_j> for every pair j < i, ordered (1,0), (2,0), (2,1), (3,0), ... as in the
    reference's `interact_features`. [B, N, D] -> [B, N (N - 1) / 2]."""
    n = vectors.shape[1]
    gram = torch.bmm(vectors, vectors.transpose(1, 2))  # [B, N, N]
    i, j = torch.tril_indices(n, n, offset=-1, device=vectors.device)
    return gram[:, i, j]


class DLRM(CTRModel):
    """z = bottom(dense) [B, D]; top([z, dots among (z, fields)]) -> logit."""

    def __init__(self, embedding: TableEmbedding, cfg: DLRMConfig | None = None) -> None:
        super().__init__(embedding)
        self.cfg = cfg = cfg or DLRMConfig()
        dim = embedding.dim
        vectors = self.n_fields + (1 if self.n_dense else 0)
        if vectors < 2:
            raise ValueError(
                f"DLRM interacts pairs of vectors and needs at least 2 (sparse fields, plus 1 for the dense "
                f"features), got {vectors}; add a sparse or dense feature, or use another model"
            )
        # the reference's bottom MLP ends in a ReLU too: every layer of MLP(hidden + (D,)) has one
        self.bottom = MLP(self.n_dense, (*cfg.bottom_hidden, dim)) if self.n_dense else None
        top_in = (dim if self.n_dense else 0) + vectors * (vectors - 1) // 2
        self.top = MLP(top_in, cfg.top_hidden, out_dim=1)

    def forward(self, sparse: KeyedJaggedTensor, dense: Tensor) -> Tensor:
        self.check_dense(dense)
        x = self.fields(sparse)  # [B, F, D]
        if self.bottom is None:
            return self.top(dot_interaction(x)).squeeze(1)
        z = self.bottom(dense)  # [B, D]
        dots = dot_interaction(torch.cat([z.unsqueeze(1), x], dim=1))  # [B, (F + 1) F / 2]
        return self.top(torch.cat([z, dots], dim=1)).squeeze(1)
