"""TWIN-style two-stage target attention (Chang et al., KDD 2023, "TWIN: TWo-stage Interest
Network"): a search stage (GSU) scores every history item against the target and keeps the
top k; an aggregation stage (ESU) attends over those k only.

As in TWIN, both stages use the same attention (consistency): scores per head are
<W_q target, W_k item> / sqrt(head_dim); the search ranks by the mean over heads, the
aggregation is a per-head softmax over the k kept items of W_v item, heads concatenated.
Deviations: no behaviour-side features in the scores (TWIN adds a term from the item's
other attributes; a behaviour here is the concatenation of its paired features), no
caching of the projections of the history, and the head MLP plays the role of W_o.
One embedding per item: reads the representation view only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.models.base import MLP
from recemb.models.target_attention import (
    TargetAttentionModel,
    check_positive,
    check_widths,
    gather_items,
    masked_softmax,
    top_k,
)
from recemb.tables.base import TableEmbedding


@dataclass(frozen=True)
class TWINConfig:
    """TWIN-style two-stage attention: search the top k history items, attend over those.

    heads x head_dim: the width of the query/key/value projections. pairs: as DINConfig."""

    name: ClassVar[str] = "twin"
    k: int = 20
    heads: int = 2
    head_dim: int = 16
    hidden: tuple[int, ...] = (200, 80)
    dropout: float = 0.0
    pairs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_positive(type(self).__name__, k=self.k, heads=self.heads, head_dim=self.head_dim)
        check_widths(type(self).__name__, "hidden", self.hidden)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"{type(self).__name__}.dropout must be in [0, 1), got {self.dropout}")


class TwoStageAttention(nn.Module):
    """Target [B, W], history [B, L, W], mask [B, L] -> [B, heads * head_dim]."""

    def __init__(self, width: int, k: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.k, self.heads, self.head_dim = k, heads, head_dim
        self.query = nn.Linear(width, heads * head_dim, bias=False)
        self.key_value = nn.Linear(width, 2 * heads * head_dim, bias=False)

    def forward(self, target: Tensor, history: Tensor, mask: Tensor) -> Tensor:
        batch, length, _ = history.shape
        q = self.query(target).view(batch, 1, self.heads, self.head_dim)
        k, v = self.key_value(history).view(batch, length, 2, self.heads, self.head_dim).unbind(2)  # [B, L, H, d]
        scores = (q * k).sum(3) / math.sqrt(self.head_dim)  # [B, L, H]
        positions, present = top_k(scores.mean(2), mask, self.k)  # search: [B, k]
        kept = scores.gather(1, positions.unsqueeze(2).expand(-1, -1, self.heads))  # [B, k, H]
        weights = masked_softmax(kept.transpose(1, 2), present.unsqueeze(1))  # [B, H, k]
        values = gather_items(v.flatten(2), positions).view(batch, -1, self.heads, self.head_dim)  # [B, k, H, d]
        return torch.einsum("bhk,bkhd->bhd", weights, values).flatten(1)


class TWIN(TargetAttentionModel):
    """Head MLP over [pooled features, unpaired histories, dense, one two-stage attention
    output per behaviour]."""

    def __init__(self, embedding: TableEmbedding, cfg: TWINConfig | None = None) -> None:
        cfg = cfg or TWINConfig()
        super().__init__(embedding, cfg.pairs, "twin")
        self.cfg = cfg
        self.attention = nn.ModuleList(
            TwoStageAttention(len(b.targets) * self.dim, cfg.k, cfg.heads, cfg.head_dim) for b in self.behaviours
        )
        width = self.other_width + len(self.behaviours) * cfg.heads * cfg.head_dim
        self.head = MLP(width, cfg.hidden, cfg.dropout, out_dim=1)

    def forward(self, sparse: KeyedJaggedTensor, dense: Tensor) -> Tensor:
        emb = self.embed(sparse, dense)
        parts = [self.others(emb, dense)]
        for b, attention in zip(self.behaviours, self.attention):
            parts.append(attention(*self.behaviour(emb, b)))
        return self.head(torch.cat(parts, dim=1)).squeeze(1)
