"""DNIS (Cheng, Shen, Huang, "Differentiable Neural Input Search for Recommender Systems",
2020): a soft selection layer α (frequency groups × dimensions, clipped to [0, 1]) scales
every embedding; α is trained on validation batches (bilevel, first order) or jointly with
the model; magnitude pruning of α's entries then fixes which dimensions each group keeps.

A table's ids fall into `groups` frequency groups: id ranges with log-spaced bounds
(⌈n^(k/K)⌉), so the most frequent ids get small groups of their own. recemb's readers
number ids by decreasing training frequency, which makes id ranges frequency groups; for
data numbered otherwise (the synthetic generator scrambles ids) they are plain id ranges.
recemb.pruning.procedures runs the stages: search (training with α), pruning to the target
sparsity, and an optional fine-tuning with the pruned α fixed.

Deviations: groups are per logical table; a table read by a multi-hot bag has one group
(a bag's pooled vector is a sum of rows of mixed groups, which a per-row α cannot scale
after the fused lookup); α is trained by Adam, whose per-entry normalisation stands in for
the paper's gradient normalisation; the pruning score of a (group, dimension) entry is α
times the group's mean |embedding| in that dimension, and each group keeps a multiple of 4
dimensions (fbgemm's int8 export widths): entries are pruned in chunks of 4 per group.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.features import Schema
from recemb.storage import LookupSpec, StoreLayout, StoreSettings, TableSpec
from recemb.storage.layout import BYTES_PER_FLOAT
from recemb.tables.base import Embedded, TableEmbedding
from recemb.tables.budget import budget_floats, check_budget_fields, too_small
from recemb.tables.mixed_dim import WIDTH_MULTIPLE, check_dim

MODES: tuple[str, ...] = ("bilevel", "joint")
COLUMN_BYTES = 4  # an int32 output column per kept dimension of a group, in the export


def group_starts(cardinality: int, groups: int) -> list[int]:
    """First id of each group: 0 and ⌈n^(k/K)⌉ for k = 1..K-1, deduplicated, below n."""
    starts = {0} | {math.ceil(cardinality ** (k / groups)) for k in range(1, groups)}
    return sorted(s for s in starts if s < cardinality)


@dataclass(frozen=True)
class Dnis:
    """Settings for DnisEmbedding and its stages.

    groups: frequency groups per table. mode: `bilevel` (α on validation batches, one after
    each training step) or `joint` (α on the training loss). selection_lr: α's Adam.
    sparsity: fraction of the table parameters pruned; or budget (bytes) / budget_ratio (of
    `full`'s bytes), what the pruned tables (and their column maps) may take.
    finetune_epochs: training with the pruned α fixed (0: none).
    """

    kind: ClassVar[str] = "dnis"
    dim: int = 16
    groups: int = 4
    mode: str = "bilevel"
    selection_lr: float = 0.01
    sparsity: float = 0.5
    budget: int = 0
    budget_ratio: float = 0.0
    finetune_epochs: int = 1
    init_std: float = 0.01

    def __post_init__(self) -> None:
        check_dim("Dnis", self.dim)
        if self.groups < 1:
            raise ValueError(f"Dnis.groups must be >= 1, got {self.groups}")
        if self.mode not in MODES:
            raise ValueError(f"Dnis.mode must be one of {MODES}, got {self.mode!r}")
        if not self.selection_lr > 0:
            raise ValueError(f"Dnis.selection_lr must be > 0, got {self.selection_lr}")
        if not 0 <= self.sparsity < 1:
            raise ValueError(f"Dnis.sparsity must be in [0, 1), got {self.sparsity}")
        check_budget_fields("Dnis", self.budget, self.budget_ratio)
        if self.finetune_epochs < 0:
            raise ValueError(f"Dnis.finetune_epochs must be >= 0, got {self.finetune_epochs}")
        if not self.init_std > 0:
            raise ValueError(f"Dnis.init_std must be > 0, got {self.init_std}")


class DnisEmbedding(TableEmbedding):
    """Full-width tables; every vector is scaled by its id's group's row of α ⊙ mask."""

    def __init__(self, schema: Schema, cfg: Dnis, settings: StoreSettings) -> None:
        super().__init__(schema, settings)
        self.cfg = cfg
        tables = schema.tables()
        self.table_names = list(tables)
        self.cardinality = {t: m[0].cardinality for t, m in tables.items()}
        self.groups: dict[str, list[tuple[int, int]]] = {}  # table -> [(lo, hi)] id range per group
        starts, first_group, offset, group = [], {}, 0, 0
        for t, members in tables.items():
            n = self.cardinality[t]
            bounds = [0] if any(f.kind == "multi_hot" for f in members) else group_starts(n, cfg.groups)
            self.groups[t] = list(zip(bounds, [*bounds[1:], n]))
            first_group[t] = group
            starts += [offset + b for b in bounds]
            offset, group = offset + n, group + len(bounds)
        self.n_groups = group
        self._bag_group = {i: first_group[f.table_name] for i, f in enumerate(schema.sparse) if f.kind == "multi_hot"}
        self.register_buffer("_starts", torch.tensor(starts), persistent=False)  # global first id of each group
        table_offset = torch.tensor([0, *self.cardinality.values()]).cumsum(0)[:-1]
        offsets = dict(zip(self.table_names, table_offset.tolist()))
        self.register_buffer(
            "_feature_offset", torch.tensor([offsets[f.table_name] for f in schema.sparse]), persistent=False
        )
        self.selection = nn.Parameter(torch.ones(group, cfg.dim))  # α: [G, D] in [0, 1]
        self.register_buffer("mask", torch.ones(group, cfg.dim))  # 0 where pruned (persistent: the searched result)
        self._frozen = False
        self._build_store()

    @property
    def dim(self) -> int:
        return self.cfg.dim

    def layout(self) -> StoreLayout:
        tables = tuple(
            TableSpec(t, self.cardinality[t], self.cfg.dim, init_std=self.cfg.init_std) for t in self.table_names
        )
        lookups = tuple(
            LookupSpec(f.name, f.table_name, "none" if f.is_sequence else f.pooling, f.max_len)
            for f in self.schema.sparse
        )
        return StoreLayout(tables, lookups)

    @contextmanager
    def frozen_rows(self) -> Iterator[None]:
        """Lookups without autograd into the store: a backward (on validation batches) then
        reaches α but leaves the fused rows untouched."""
        self._frozen, before = True, self._frozen
        try:
            yield
        finally:
            self._frozen = before

    def embed(self, kjt: KeyedJaggedTensor) -> Embedded:
        rows = self.store_input(kjt)
        if self._frozen:
            with torch.no_grad():
                out = self.store(rows, check_ids=False)
        else:
            out = self.store(rows, check_ids=False)
        return self.combine_output(out, kjt)

    def store_input(self, kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        self.check_id_range(kjt)
        return kjt

    def value_groups(self, kjt: KeyedJaggedTensor) -> Tensor:
        """[nnz]: the group of each id."""
        counts = torch.tensor(kjt.length_per_key(), device=kjt.values().device)
        offsets = torch.repeat_interleave(self._feature_offset, counts, output_size=kjt.values().numel())
        return torch.bucketize(kjt.values().long() + offsets, self._starts, right=True) - 1

    def scales(self) -> Tensor:
        """[G + 1, D]: α ⊙ mask per group, and a zero row that padding reads."""
        return torch.cat([self.selection * self.mask, self.selection.new_zeros(1, self.cfg.dim)])

    def combine_output(self, out: Tensor, kjt: KeyedJaggedTensor) -> Embedded:
        emb = self.split_store_output(out, kjt)
        batch, scales = kjt.stride(), self.scales()
        groups = self.value_groups(kjt)
        starts = [0, *torch.tensor(kjt.length_per_key()).cumsum(0).tolist()]
        pooled_scales, sequences = [], {}
        for i, spec in enumerate(self.schema.sparse):
            g = groups[starts[i] : starts[i + 1]]
            if spec.is_sequence:
                offsets = kjt[spec.name].offsets()
                padded = torch.ops.fbgemm.jagged_1d_to_dense(g, offsets, spec.max_len, self.n_groups)  # [B, L]
                x, mask = emb.sequences[spec.name]
                sequences[spec.name] = (x * scales[padded], mask)
            elif spec.kind == "single":
                pooled_scales.append(scales[g])  # [B, D]: one id per sample
            else:  # a bag's table has one group
                pooled_scales.append(scales[self._bag_group[i]].expand(batch, -1))
        pooled = emb.pooled * torch.stack(pooled_scales, dim=1) if pooled_scales else emb.pooled
        return Embedded(pooled, sequences)

    # -- pruning -------------------------------------------------------------------------------
    def target_floats(self) -> int:
        """Table parameters the pruned tables may keep (budget less the column maps' worst case)."""
        full = sum(self.cardinality.values()) * self.cfg.dim
        floats = budget_floats(self.cfg.budget, self.cfg.budget_ratio, self.schema, self.cfg.dim)
        if floats is None:
            return int((1 - self.cfg.sparsity) * full)
        maps = self.n_groups * self.cfg.dim * COLUMN_BYTES // BYTES_PER_FLOAT
        if floats < maps:
            raise too_small(
                "Dnis", self.cfg.budget, self.cfg.budget_ratio, maps * BYTES_PER_FLOAT, "the column maps of every group"
            )
        return floats - maps

    @torch.no_grad()
    def prune(self) -> dict[str, float]:
        """Fix `mask`: keep the (group, dimension) entries of largest score α·mean|e| within
        the target, in chunks of 4 dimensions per group (a group's dimensions sorted by score,
        a chunk scored by its mean): greedy over chunks, best first. Returns what was kept."""
        weights = self.store.table_weights()
        sizes, scores = [], []
        for t in self.table_names:
            for lo, hi in self.groups[t]:
                sizes.append(hi - lo)
                scores.append(weights[t][lo:hi].abs().mean(0))  # [D]
        score = torch.stack(scores) * (self.selection * self.mask).clamp(0, 1)  # [G, D]
        ranked, dims = torch.sort(score, dim=1, descending=True, stable=True)
        chunks = ranked.view(self.n_groups, -1, WIDTH_MULTIPLE).mean(-1)  # [G, D/4], falling along a row
        budget, used = self.target_floats(), 0
        kept = [0] * self.n_groups
        for flat in torch.argsort(chunks.flatten(), descending=True, stable=True).tolist():
            g = flat // chunks.shape[1]
            if used + WIDTH_MULTIPLE * sizes[g] <= budget and flat % chunks.shape[1] == kept[g] // WIDTH_MULTIPLE:
                kept[g] += WIDTH_MULTIPLE
                used += WIDTH_MULTIPLE * sizes[g]
        mask = torch.zeros_like(self.mask)
        for g, n in enumerate(kept):
            mask[g, dims[g, :n]] = 1.0
        self.mask.copy_(mask)
        total = sum(sizes) * self.cfg.dim
        return {"kept_floats": float(used), "sparsity": 1 - used / total}

    def serving_bytes(self) -> int:
        """What the export's fp32 tables take: kept dimensions of each group, and their columns."""
        sizes = torch.tensor([hi - lo for t in self.table_names for lo, hi in self.groups[t]])
        kept = self.mask.sum(1).long()
        return int((sizes * kept).sum()) * BYTES_PER_FLOAT + int(kept.sum()) * COLUMN_BYTES

    # -- export ---------------------------------------------------------------------------------
    def export_tables(self) -> dict[str, list[dict]]:
        """Blocks for recemb.export: per group, its id range, the kept columns of e ⊙ α."""
        weights = self.store.table_weights()
        scales = (self.selection * self.mask).detach()
        out: dict[str, list[dict]] = {}
        g = 0
        for t in self.table_names:
            blocks = []
            for lo, hi in self.groups[t]:
                columns = torch.nonzero(self.mask[g]).flatten()
                if columns.numel():
                    weight = (weights[t][lo:hi] * scales[g])[:, columns]
                    blocks.append({"lo": lo, "hi": hi, "weight": weight, "columns": columns})
                g += 1
            out[t] = blocks
        return out
