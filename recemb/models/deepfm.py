"""DeepFM (Guo et al., IJCAI 2017): a factorization machine and a DNN sharing one embedding.

Deviation: the FM's first-order weight of an id is a learned linear map of its field
embedding (`layers.FirstOrder`), not a row of a separate 1-wide table, so that any table
kind serves the model unchanged. Dense features enter as FM treats real-valued inputs:
x_m w_m in the linear term and x_m v_m as a field (`DenseFields`) in the second-order term
and the DNN, which read the same fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.models.base import MLP, CTRModel, DenseFields
from recemb.models.layers import FirstOrder, fm_second_order
from recemb.tables.base import TableEmbedding


@dataclass(frozen=True)
class DeepFMConfig:
    """The paper's setting: a 400-400-400 ReLU DNN with dropout 0.5."""

    name: ClassVar[str] = "deepfm"
    dnn_hidden: tuple[int, ...] = (400, 400, 400)
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if any(w < 1 for w in self.dnn_hidden):
            raise ValueError(f"{type(self).__name__}.dnn_hidden widths must be >= 1, got {self.dnn_hidden}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"{type(self).__name__}.dropout must be in [0, 1), got {self.dropout}")


class DeepFM(CTRModel):
    """logit = first order + FM second order over all fields + DNN over the flattened fields.
    `dnn_hidden=()` leaves a single linear layer as the deep part."""

    def __init__(self, embedding: TableEmbedding, cfg: DeepFMConfig | None = None) -> None:
        super().__init__(embedding)
        self.cfg = cfg = cfg or DeepFMConfig()
        dim = embedding.dim
        self.first_order = FirstOrder(self.n_fields, dim, self.n_dense)
        self.dense_fields = DenseFields(self.n_dense, dim) if self.n_dense else None
        self.dnn = MLP((self.n_fields + self.n_dense) * dim, cfg.dnn_hidden, cfg.dropout, out_dim=1)

    def forward(self, sparse: KeyedJaggedTensor, dense: Tensor) -> Tensor:
        self.check_dense(dense)
        x = self.fields(sparse)  # [B, F, D]
        logit = self.first_order(x, dense)  # [B]
        if self.dense_fields is not None:
            x = torch.cat([x, self.dense_fields(dense)], dim=1)  # [B, F + n_dense, D]
        return logit + fm_second_order(x) + self.dnn(x.flatten(1)).squeeze(1)
