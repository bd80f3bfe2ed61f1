"""What the target-attention models (DIN, TWIN, DARE) share: which history pairs with which
target, the batch's vectors arranged per behaviour sequence, masked softmax and top-k.

Pairing. A history (a sequence feature) pairs with the target that reads the same logical
table (`FeatureSpec.table`), as the papers share one table between a target item and the
items of the history: `hist_item` (table `item`) pairs with `item`. A history of categories
pairs with the target's category the same way. `pairs=("hist=item",)` names pairs
explicitly (needed when two pooled features read the history's table); a named pair whose
features do not exist, are of the wrong kind or read different tables is refused.

Behaviours. Paired histories of the same `max_len` are one behaviour sequence: item j of
each is one behaviour (the item and its category), so their vectors are concatenated,
[B, L, P·D] against the targets' [B, P·D], as DIN concatenates goods and category
embeddings. Such histories must have the same length in every sample (checked). Histories
of different `max_len` are separate behaviours, each with its own attention. Unpaired
histories are mean-pooled over their items and go to the head MLP with the other features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.features import Schema
from recemb.models.base import CTRModel
from recemb.tables.base import Embedded, TableEmbedding


@dataclass(frozen=True)
class Behaviour:
    """Aligned histories and the pooled feature each pairs with (same order)."""

    histories: tuple[str, ...]
    targets: tuple[str, ...]
    max_len: int


def parse_pairs(entries: tuple[str, ...]) -> dict[str, str]:
    """("hist=item", "hist_cate=cate") -> {"hist": "item", "hist_cate": "cate"}."""
    out = {}
    for entry in entries:
        history, sep, target = entry.partition("=")
        if not sep or not history.strip() or not target.strip():
            raise ValueError(f"pairs entries must look like 'history=target', got {entry!r}")
        out[history.strip()] = target.strip()
    return out


def pair_sequences(schema: Schema, pairs: tuple[str, ...], model: str) -> tuple[list[Behaviour], list[str]]:
    """The behaviour sequences of a schema and its unpaired histories (module docstring)."""
    explicit = parse_pairs(pairs)
    names = list(schema.names)
    for history, target in explicit.items():
        for name in (history, target):
            if name not in names:
                raise ValueError(f"{model}: pairs names unknown feature {name!r}; the schema has {names}")
        h, t = schema.feature(history), schema.feature(target)
        if not h.is_sequence:
            raise ValueError(f"{model}: pairs entry {history}={target}: {history!r} is {h.kind!r}, not a sequence")
        if t.is_sequence:
            raise ValueError(
                f"{model}: pairs entry {history}={target}: target {target!r} is a sequence; "
                "pair a history with a pooled feature"
            )
        if h.table_name != t.table_name:
            raise ValueError(
                f"{model}: history {history!r} reads table {h.table_name!r} but target {target!r} reads "
                f"{t.table_name!r}; a history and its target must share a table (FeatureSpec.table)"
            )
    paired: dict[str, str] = {}
    unpaired: list[str] = []
    for h in schema.sequences:
        if h.name in explicit:
            paired[h.name] = explicit[h.name]
            continue
        candidates = [f.name for f in schema.pooled if f.table_name == h.table_name]
        if len(candidates) > 1:
            raise ValueError(
                f"{model}: history {h.name!r} shares table {h.table_name!r} with several pooled features "
                f"{candidates}; name its target with pairs=('{h.name}={candidates[0]}',)"
            )
        if candidates:
            paired[h.name] = candidates[0]
        else:
            unpaired.append(h.name)
    if not paired:
        sequences = [f"{f.name} (table {f.table_name!r})" for f in schema.sequences]
        raise ValueError(
            f"{model} needs a history paired with a target: a sequence feature that shares its table with "
            f"a pooled feature (FeatureSpec.table, e.g. hist_item with table='item'); the schema has "
            f"sequences {sequences or 'none'} and pooled features {[f.name for f in schema.pooled]}"
        )
    by_len: dict[int, list[str]] = {}
    for history in paired:
        by_len.setdefault(schema.feature(history).max_len, []).append(history)
    behaviours = [Behaviour(tuple(hs), tuple(paired[h] for h in hs), n) for n, hs in by_len.items()]
    return behaviours, unpaired


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dim where `mask` holds; 0 elsewhere, and all 0 for a row
    without any item (an empty history gives zeros, never NaN)."""
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=-1) * mask.to(scores.dtype)


def top_k(scores: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Positions [B, k'] of the k' = min(k, L) highest scores among present items, and
    which of them are present [B, k'] (fewer than k items leave absent picks)."""
    k = min(k, scores.shape[1])
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    positions = filled.topk(k, dim=1, sorted=False).indices  # [B, k]
    return positions, mask.gather(1, positions)


def gather_items(x: Tensor, positions: Tensor) -> Tensor:
    """x [B, L, D] at positions [B, k] -> [B, k, D]."""
    return x.gather(1, positions.unsqueeze(2).expand(-1, -1, x.shape[2]))


class TargetAttentionModel(CTRModel):
    """Base of DIN, TWIN and DARE: the behaviours of the schema, their tensors per batch,
    and the features that are not histories, flattened for the head MLP."""

    def __init__(self, embedding: TableEmbedding, pairs: tuple[str, ...], model: str) -> None:
        super().__init__(embedding)
        schema = embedding.schema
        self.behaviours, self.unpaired = pair_sequences(schema, pairs, model)
        self._pooled_index = {f.name: i for i, f in enumerate(schema.pooled)}
        self.dim = embedding.dim
        self.attention_dim = getattr(embedding, "attention_dim", embedding.dim)
        # pooled features (targets included) and mean-pooled unpaired histories, then dense
        self.other_width = (len(schema.pooled) + len(self.unpaired)) * self.dim + self.n_dense

    def behaviour(self, emb: Embedded, b: Behaviour) -> tuple[Tensor, Tensor, Tensor]:
        """target [B, P·D], history [B, L, P·D], mask [B, L] of one behaviour."""
        index = [self._pooled_index[t] for t in b.targets]
        target = emb.pooled[:, index].flatten(1)
        history = torch.cat([emb.sequences[h][0] for h in b.histories], dim=2)
        mask = emb.sequences[b.histories[0]][1]
        for h in b.histories[1:]:
            if not torch.equal(emb.sequences[h][1], mask):
                raise ValueError(
                    f"histories {list(b.histories)} form one behaviour sequence (same max_len) and must have the "
                    f"same length in every sample; {h!r} differs from {b.histories[0]!r}"
                )
        return target, history, mask

    def others(self, emb: Embedded, dense: Tensor) -> Tensor:
        """[B, other_width]: pooled vectors, mean-pooled unpaired histories, dense features."""
        parts = [emb.pooled.flatten(1)]
        for name in self.unpaired:
            padded, mask = emb.sequences[name]  # [B, L, D], [B, L]
            m = mask.unsqueeze(2).to(padded.dtype)
            parts.append((padded * m).sum(1) / m.sum(1).clamp(min=1))
        parts.append(dense)
        return torch.cat(parts, dim=1)

    def embed(self, sparse: KeyedJaggedTensor, dense: Tensor) -> Embedded:
        self.check_dense(dense)
        return self.embedding(sparse)


def check_positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{owner}.{name} must be >= 1, got {value}")


def check_widths(owner: str, name: str, widths: tuple[int, ...]) -> None:
    if any(w < 1 for w in widths):
        raise ValueError(f"{owner}.{name} widths must be >= 1, got {widths}")
