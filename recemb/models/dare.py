"""DARE, Decoupled Attention and Representation Embeddings (Feng et al., ICLR 2025): the
search stage scores history items with attention embeddings, the aggregation sums
representation embeddings.

Search: score_j = <a(target), a(item_j)> over the attention view (no projection: the
paper finds projections do not resolve the conflict between the two roles), keep the top
k present items. Aggregation: h = Σ_top-k softmax(score)_j · r(item_j) over the
representation view. Head: an MLP over [r(target), h, r(target) ⊙ h] (the paper's
target-aware representation) with the other features. The attention width may be
smaller than the representation width (decoupled kind: `attention=full:dim=8`).

Given an ordinary table both views are the same vectors: that is the paper's single-table
(TWIN-without-projection) baseline. Deviation: the store looks every history item up in
both tables in one fused call, where a serving system would fetch representation rows for
the top k only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
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
class DAREConfig:
    """DARE: search the top k with attention embeddings, sum representation embeddings.

    hidden: the head MLP over [target, history, target ⊙ history]. pairs: as DINConfig."""

    name: ClassVar[str] = "dare"
    k: int = 20
    hidden: tuple[int, ...] = (200, 80)
    dropout: float = 0.0
    pairs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_positive(type(self).__name__, k=self.k)
        check_widths(type(self).__name__, "hidden", self.hidden)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"{type(self).__name__}.dropout must be in [0, 1), got {self.dropout}")


def search(target: Tensor, history: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The search stage on attention vectors, target [B, Wa], history [B, L, Wa]: the
    positions [B, k'] of the top k present items, which of them are present [B, k'], and
    their scores [B, k']."""
    scores = torch.einsum("bw,blw->bl", target, history)  # [B, L]
    positions, present = top_k(scores, mask, k)
    return positions, present, scores.gather(1, positions)


class DARE(TargetAttentionModel):
    """Head MLP over [pooled features (targets included), unpaired histories, dense, and
    per behaviour h and r(target) ⊙ h]."""

    def __init__(self, embedding: TableEmbedding, cfg: DAREConfig | None = None) -> None:
        cfg = cfg or DAREConfig()
        super().__init__(embedding, cfg.pairs, "dare")
        self.cfg = cfg
        width = self.other_width + sum(2 * len(b.targets) * self.dim for b in self.behaviours)
        self.head = MLP(width, cfg.hidden, cfg.dropout, out_dim=1)

    def forward(self, sparse: KeyedJaggedTensor, dense: Tensor) -> Tensor:
        rep = self.embed(sparse, dense)
        att = rep.view("attention")  # the same vectors for an ordinary table
        parts = [self.others(rep, dense)]
        for b in self.behaviours:
            target_a, history_a, mask = self.behaviour(att, b)
            target_r, history_r, _ = self.behaviour(rep, b)
            positions, present, scores = search(target_a, history_a, mask, self.cfg.k)
            weights = masked_softmax(scores, present)  # [B, k]
            h = torch.einsum("bk,bkw->bw", weights, gather_items(history_r, positions))  # [B, Wr]
            parts += [h, target_r * h]
        return self.head(torch.cat(parts, dim=1)).squeeze(1)
