"""What every CTR model shares: it receives its embedding and turns a batch into logits."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.models.dropout import BatchDropout
from recemb.tables.base import TableEmbedding


class CTRModel(nn.Module, ABC):
    """Base of the model zoo: `forward(sparse, dense) -> logits [B]`.

    A model never knows which table kind it was given; it reads `fields(kjt)`
    ([B, F, D]) or `embedding(kjt)` and the schema's dense features.
    """

    def __init__(self, embedding: TableEmbedding) -> None:
        super().__init__()
        self.embedding = embedding
        self.n_dense = len(embedding.schema.dense)

    def check_dense(self, dense: Tensor) -> None:
        if dense.dim() != 2 or dense.shape[1] != self.n_dense:
            raise ValueError(
                f"dense features must be [B, {self.n_dense}] ({list(self.embedding.schema.dense)}), "
                f"got shape {tuple(dense.shape)}"
            )
        if not dense.is_floating_point():
            raise TypeError(f"dense features must be floating point, got {dense.dtype}")
        if torch.isnan(dense).any():
            raise ValueError("dense features contain NaN; fill missing values before the model")

    def fields(self, sparse: KeyedJaggedTensor) -> Tensor:
        """[B, F + S, D]: pooled features, then each sequence averaged over its present
        items (an empty history gives zeros), for models without target attention."""
        out = self.embedding(sparse)
        if not out.sequences:
            return out.pooled
        means = []
        for padded, mask in out.sequences.values():  # [B, L, D], [B, L]
            m = mask.unsqueeze(2).to(padded.dtype)
            means.append((padded * m).sum(1) / m.sum(1).clamp(min=1))
        return torch.cat([out.pooled, torch.stack(means, dim=1)], dim=1)

    @property
    def n_fields(self) -> int:
        """Sparse fields that `fields` returns (pooled features plus sequences)."""
        return len(self.embedding.schema.sparse)

    def dense_parameters(self) -> list[nn.Parameter]:
        """Parameters for a torch optimizer: all but the store's, which update in backward."""
        fused = {id(p) for p in self.embedding.fused_parameters()}
        return [p for p in self.parameters() if id(p) not in fused]

    @abstractmethod
    def forward(self, sparse: KeyedJaggedTensor, dense: Tensor) -> Tensor:
        """Logits [B] (before the sigmoid)."""


class MLP(nn.Sequential):
    """Linear -> ReLU -> Dropout blocks; `out_dim` adds a final plain Linear. The dropout
    draws its mask for the global batch (BatchDropout), so sharded runs drop as one does."""

    def __init__(self, in_dim: int, hidden: Sequence[int], dropout: float = 0.0, out_dim: int | None = None) -> None:
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.ReLU()]
            if dropout:
                layers.append(BatchDropout(dropout))
            in_dim = width
        if out_dim is not None:
            layers.append(nn.Linear(in_dim, out_dim))
        super().__init__(*layers)


class DenseFields(nn.Module):
    """Numeric features as fields: x_m -> x_m * v_m, one learned vector v_m per feature
    (AutoInt, Song et al. 2019, section 4.1). [B, n_dense] -> [B, n_dense, D]."""

    def __init__(self, n_dense: int, dim: int) -> None:
        super().__init__()
        self.vectors = nn.Parameter(torch.randn(n_dense, dim) * 0.01)

    def forward(self, dense: Tensor) -> Tensor:
        return dense.unsqueeze(2) * self.vectors
