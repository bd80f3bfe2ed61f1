"""AutoInt and AutoInt+ (Song et al., CIKM 2019): multi-head self-attention over feature fields.

Deviation: attention scores are scaled by 1/sqrt(attention_dim) (scaled dot product, as in
the Transformer the official code builds on), which lets us use a fused attention kernel
(recemb.models.field_attention: on the CPU a C++ kernel that also makes the q/k/v
projection, torch's `scaled_dot_product_attention` elsewhere).

Dense features are fields by default (the paper embeds numerical features as fields too).
`dense_as_fields=False` sends them to a linear term of the logit instead, as DeepCTR-Torch's
AutoInt does; attention then covers only the sparse fields (F² work per sample).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.models.base import MLP, CTRModel, DenseFields
from recemb.models.field_attention import projected_field_attention
from recemb.tables.base import TableEmbedding


@dataclass(frozen=True)
class AutoIntConfig:
    """The paper's setting: 3 interacting layers, 2 heads, attention width 32, residual."""

    name: ClassVar[str] = "autoint"
    layers: int = 3
    heads: int = 2
    attention_dim: int = 32
    residual: bool = True
    dnn_hidden: tuple[int, ...] = ()
    dropout: float = 0.0
    dense_as_fields: bool = True

    def __post_init__(self) -> None:
        for field in ("layers", "heads", "attention_dim"):
            if getattr(self, field) < 1:
                raise ValueError(f"{type(self).__name__}.{field} must be >= 1, got {getattr(self, field)}")
        if any(w < 1 for w in self.dnn_hidden):
            raise ValueError(f"{type(self).__name__}.dnn_hidden widths must be >= 1, got {self.dnn_hidden}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"{type(self).__name__}.dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class AutoIntPlusConfig(AutoIntConfig):
    """AutoInt+: AutoInt with a parallel feed-forward network over all field embeddings."""

    name: ClassVar[str] = "autoint_plus"
    dnn_hidden: tuple[int, ...] = (256, 256)


class InteractingLayer(nn.Module):
    """One multi-head self-attention layer over fields: [B, F, d_in] -> [B, F, heads * d']."""

    def __init__(self, in_dim: int, heads: int, attention_dim: int, residual: bool) -> None:
        super().__init__()
        self.heads, self.attention_dim = heads, attention_dim
        self.qkv = nn.Linear(in_dim, 3 * heads * attention_dim, bias=False)  # W_Query, W_Key, W_Value
        self.res = nn.Linear(in_dim, heads * attention_dim, bias=False) if residual else None

    def forward(self, x: Tensor) -> Tensor:
        batch, fields, _ = x.shape
        # = field_self_attention(self.qkv(x) viewed [B, F, 3, H, d']), qkv made in the kernel
        out = projected_field_attention(x, self.qkv.weight, self.heads, self.attention_dim**-0.5)  # [B, F, H, d']
        out = out.reshape(batch, fields, self.heads * self.attention_dim)
        if self.res is not None:
            out = out + self.res(x)
        return F.relu(out)


class AutoInt(CTRModel):
    """Fields = sparse embeddings [B, F, D] + dense features as fields [B, n_dense, D] (or,
    with dense_as_fields=False, a linear term of the dense features); stacked interacting
    layers; a linear layer on the flattened output (plus a DNN for AutoInt+)."""

    def __init__(self, embedding: TableEmbedding, cfg: AutoIntConfig | None = None) -> None:
        super().__init__(embedding)
        self.cfg = cfg = cfg or AutoIntConfig()
        dim = embedding.dim
        dense_fields = self.n_dense if cfg.dense_as_fields else 0
        fields = self.n_fields + dense_fields
        self.dense_fields = DenseFields(self.n_dense, dim) if dense_fields else None
        self.dense_linear = nn.Linear(self.n_dense, 1, bias=False) if self.n_dense and not dense_fields else None
        widths = [dim] + [cfg.heads * cfg.attention_dim] * cfg.layers
        self.interacting = nn.Sequential(
            *(InteractingLayer(w, cfg.heads, cfg.attention_dim, cfg.residual) for w in widths[:-1])
        )
        self.attention_out = nn.Linear(fields * widths[-1], 1)
        self.dnn = MLP(fields * dim, cfg.dnn_hidden, cfg.dropout, out_dim=1) if cfg.dnn_hidden else None

    def forward(self, sparse: KeyedJaggedTensor, dense: Tensor) -> Tensor:
        self.check_dense(dense)
        x = self.fields(sparse)  # [B, F, D]
        if self.dense_fields is not None:
            x = torch.cat([x, self.dense_fields(dense)], dim=1)  # [B, F + n_dense, D]
        logit = self.attention_out(self.interacting(x).flatten(1))  # [B, 1]
        if self.dense_linear is not None:
            logit = logit + self.dense_linear(dense)
        if self.dnn is not None:
            logit = logit + self.dnn(x.flatten(1))
        return logit.squeeze(1)
