"""Wide & Deep (Cheng et al., DLRS 2016): a linear model and a DNN, trained jointly, their
logits summed.

Deviations: the wide part is linear over the raw features only; the paper's hand-picked
cross-product transformations are left out (DeepFM and DCN-V2 learn crosses instead). The
wide weight of an id is a learned linear map of its field embedding (`layers.FirstOrder`),
not a row of a separate 1-wide table, so that any table kind serves the model. Both parts
train with one optimizer (the paper: FTRL with L1 for the wide part, AdaGrad for the deep).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.models.base import MLP, CTRModel
from recemb.models.layers import FirstOrder
from recemb.tables.base import TableEmbedding


@dataclass(frozen=True)
class WDLConfig:
    """The paper's setting: a 1024-512-256 ReLU DNN."""

    name: ClassVar[str] = "wdl"
    dnn_hidden: tuple[int, ...] = (1024, 512, 256)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if any(w < 1 for w in self.dnn_hidden):
            raise ValueError(f"{type(self).__name__}.dnn_hidden widths must be >= 1, got {self.dnn_hidden}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"{type(self).__name__}.dropout must be in [0, 1), got {self.dropout}")


class WDL(CTRModel):
    """wide(fields, dense) + deep([flattened fields, dense]), as in the paper's section 3.2,
    where continuous features are concatenated with the embeddings."""

    def __init__(self, embedding: TableEmbedding, cfg: WDLConfig | None = None) -> None:
        super().__init__(embedding)
        self.cfg = cfg = cfg or WDLConfig()
        self.wide = FirstOrder(self.n_fields, embedding.dim, self.n_dense)
        self.deep = MLP(self.n_fields * embedding.dim + self.n_dense, cfg.dnn_hidden, cfg.dropout, out_dim=1)

    def forward(self, sparse: KeyedJaggedTensor, dense: Tensor) -> Tensor:
        self.check_dense(dense)
        x = self.fields(sparse)  # [B, F, D]
        deep = self.deep(torch.cat([x.flatten(1), dense], dim=1)).squeeze(1)  # [B]
        return self.wide(x, dense) + deep
