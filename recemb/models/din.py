"""DIN, Deep Interest Network (Zhou et al., KDD 2018): target attention over the whole history.

A local activation unit scores each history item against the target, an MLP over
[target, item, target - item, target ⊙ item] (the official code's input; the paper names
the outer product), and the history is the sum of its items weighted by those scores.
As in the paper the weights are not normalised (`softmax=False`: "the constraint
Σ w_i = 1 is relaxed" to keep the intensity of the user's interest); `softmax=True` gives
the normalised variant of the official code. Absent items (padding) weigh 0, so an empty
history gives a zero vector.

Deviations: ReLU instead of PReLU/Dice in both MLPs, and no mini-batch aware
regularisation (the fused embedding optimizer has no per-id L2 term).
Reads the representation view only: DIN has one embedding per item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.models.base import MLP
from recemb.models.target_attention import TargetAttentionModel, check_widths, masked_softmax
from recemb.tables.base import TableEmbedding


@dataclass(frozen=True)
class DINConfig:
    """DIN: target attention over the whole history (the paper's widths: unit 80-40, head 200-80).

    softmax: normalise the weights (the official code) instead of the paper's raw scores.
    pairs: 'history=target' entries, where the shared table does not decide (target_attention)."""

    name: ClassVar[str] = "din"
    attention_hidden: tuple[int, ...] = (80, 40)
    hidden: tuple[int, ...] = (200, 80)
    softmax: bool = False
    dropout: float = 0.0
    pairs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_widths(type(self).__name__, "attention_hidden", self.attention_hidden)
        check_widths(type(self).__name__, "hidden", self.hidden)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"{type(self).__name__}.dropout must be in [0, 1), got {self.dropout}")


class ActivationUnit(nn.Module):
    """Scores [B, L] of history items [B, L, W] against the target [B, W]."""

    def __init__(self, width: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.mlp = MLP(4 * width, hidden, out_dim=1)

    def forward(self, target: Tensor, history: Tensor) -> Tensor:
        q = target.unsqueeze(1).expand_as(history)  # [B, L, W]
        return self.mlp(torch.cat([q, history, q - history, q * history], dim=2)).squeeze(2)


class DIN(TargetAttentionModel):
    """Head MLP over [pooled features (targets included), unpaired histories, dense,
    one interest vector per behaviour]."""

    def __init__(self, embedding: TableEmbedding, cfg: DINConfig | None = None) -> None:
        cfg = cfg or DINConfig()
        super().__init__(embedding, cfg.pairs, "din")
        self.cfg = cfg
        widths = [len(b.targets) * self.dim for b in self.behaviours]
        self.units = nn.ModuleList(ActivationUnit(w, cfg.attention_hidden) for w in widths)
        self.head = MLP(self.other_width + sum(widths), cfg.hidden, cfg.dropout, out_dim=1)

    def interest(self, target: Tensor, history: Tensor, mask: Tensor, unit: ActivationUnit) -> Tensor:
        """[B, W]: the history's items weighted by their activation against the target."""
        scores = unit(target, history)  # [B, L]
        if self.cfg.softmax:
            weights = masked_softmax(scores, mask)
        else:
            weights = scores * mask.to(scores.dtype)
        return torch.einsum("bl,blw->bw", weights, history)

    def forward(self, sparse: KeyedJaggedTensor, dense: Tensor) -> Tensor:
        emb = self.embed(sparse, dense)
        parts = [self.others(emb, dense)]
        for b, unit in zip(self.behaviours, self.units):
            parts.append(self.interest(*self.behaviour(emb, b), unit))
        return self.head(torch.cat(parts, dim=1)).squeeze(1)
