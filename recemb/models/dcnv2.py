"""DCN-V2 (Wang et al., WWW 2021): a cross network x_{l+1} = x0 ⊙ (W x_l + b) + x_l, stacked
with or parallel to a DNN.

Deviation: the low-rank cross layer (`rank`) is the plain W = U V^T of the paper's eq. 2;
the mixture of low-rank experts (DCN-Mix) is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.models.base import MLP, CTRModel
from recemb.tables.base import TableEmbedding

STRUCTURES: tuple[str, ...] = ("stacked", "parallel")


@dataclass(frozen=True)
class DCNv2Config:
    """3 full-rank cross layers (FuxiCTR's default) stacked under a 400-400-400 ReLU DNN.

    FuxiCTR leaves the DNN to each dataset's config; 400-400-400 is DeepFM's, for a zoo
    compared at equal width. `rank` makes each W a product U V^T of rank `rank` (FuxiCTR
    uses 32 when low rank is on); `dnn_hidden=()` is the cross network alone."""

    name: ClassVar[str] = "dcnv2"
    cross_layers: int = 3
    rank: int | None = None
    structure: Literal["stacked", "parallel"] = "stacked"
    dnn_hidden: tuple[int, ...] = (400, 400, 400)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.cross_layers < 1:
            raise ValueError(f"{type(self).__name__}.cross_layers must be >= 1, got {self.cross_layers}")
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"{type(self).__name__}.rank must be >= 1 or None (full rank), got {self.rank}")
        if self.structure not in STRUCTURES:
            raise ValueError(f"{type(self).__name__}.structure must be one of {STRUCTURES}, got {self.structure!r}")
        if any(w < 1 for w in self.dnn_hidden):
            raise ValueError(f"{type(self).__name__}.dnn_hidden widths must be >= 1, got {self.dnn_hidden}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"{type(self).__name__}.dropout must be in [0, 1), got {self.dropout}")


class CrossLayer(nn.Module):
    """x0 ⊙ (W x + b) + x, with W full [d, d] or low rank U V^T (V: d -> r, U: r -> d).
    [B, d], [B, d] -> [B, d]."""

    def __init__(self, dim: int, rank: int | None = None) -> None:
        super().__init__()
        if rank is None:
            self.weight: nn.Module = nn.Linear(dim, dim)
        else:
            self.weight = nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim))  # V^T, then U and b

    def forward(self, x0: Tensor, x: Tensor) -> Tensor:
        return x0 * self.weight(x) + x


class DCNv2(CTRModel):
    """x0 = [flattened fields, dense] [B, F D + n_dense]; stacked: cross -> DNN -> linear;
    parallel: linear over [cross output, DNN output]."""

    def __init__(self, embedding: TableEmbedding, cfg: DCNv2Config | None = None) -> None:
        super().__init__(embedding)
        self.cfg = cfg = cfg or DCNv2Config()
        width = self.n_fields * embedding.dim + self.n_dense
        self.cross = nn.ModuleList(CrossLayer(width, cfg.rank) for _ in range(cfg.cross_layers))
        self.dnn = MLP(width, cfg.dnn_hidden, cfg.dropout) if cfg.dnn_hidden else None
        dnn_out = cfg.dnn_hidden[-1] if cfg.dnn_hidden else 0
        # the output layer reads: stacked, the DNN's output; parallel, [cross, DNN]; no DNN, the cross's
        self.out = nn.Linear(dnn_out if cfg.structure == "stacked" and dnn_out else width + dnn_out, 1)

    def forward(self, sparse: KeyedJaggedTensor, dense: Tensor) -> Tensor:
        self.check_dense(dense)
        x0 = torch.cat([self.fields(sparse).flatten(1), dense], dim=1)  # [B, F D + n_dense]
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        if self.dnn is not None:
            x = self.dnn(x) if self.cfg.structure == "stacked" else torch.cat([x, self.dnn(x0)], dim=1)
        return self.out(x).squeeze(1)
