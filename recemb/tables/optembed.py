"""OptEmbed (Lyu et al., "OptEmbed: Learning Optimal Embedding Table for Click-through Rate
Prediction", CIKM 2022): learned row pruning and per-table widths.

The module has two forms. The supernet (built from the config) holds full tables and
- prunes rows: a row is kept when the L1 norm of its vector exceeds its table's learnable
  threshold t; the vector is multiplied by 1[‖e‖₁ − t > 0], whose gradient (to the vector's
  norm, hence the row, and to t) is the long-tailed straight-through estimator of Dynamic
  Sparse Training that the official code uses (recemb.pruning.masks.binary_step);
- samples widths: in training (with autograd on), each sample keeps the first k columns of
  each table's vector, k uniform over 4, 8, ..., dim (drawn for the global batch, so a
  sharded run draws what one process does); evaluation uses every column, or the widths
  `search_widths` when the evolutionary search sets them.
The searched form (built with an `OptEmbedArch`: kept rows and a width per table) holds
only the kept rows, `width` wide, plus one null row that pruned ids read and that is masked
to zero; vectors are zero-padded to `dim`. recemb.pruning.procedures runs the stages
(supernet training, evolutionary search, retraining from the initial weights).

Deviations: thresholds, widths and masks are per logical table (features sharing a table
share them; the paper's "field" thresholds); a table read by a multi-hot bag is never row
pruned, since a bag's pooled vector is a sum of rows whose own norms the fused store does
not return (it still gets a searched width); widths are multiples of 4 (the TBE store's);
the penalty α·Σ exp(−t) and the thresholds' own Adam are the official code's, added by the
procedure's training callback; the search respects the memory budget (the official code
ignores it), and a table whose int32 remap would cost more than its pruned rows save keeps
every row in the retrained model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.distributed.share import batch_share
from recemb.features import Schema
from recemb.pruning.masks import binary_step, sample_widths, width_mask
from recemb.storage import MemoryReport, StoreLayout, StoreSettings, TableSpec
from recemb.storage.layout import BYTES_PER_FLOAT
from recemb.tables.base import Embedded, TableEmbedding
from recemb.tables.budget import check_budget_fields
from recemb.tables.mixed_dim import check_dim, check_width, store_lookups, width_order

REMAP_BYTES = 4  # an int32 per raw id of a pruned table (fbgemm's index remapping)


@dataclass(frozen=True)
class OptEmbed:
    """Settings for OptEmbedEmbedding and its three stages.

    threshold_init, threshold_lr (own Adam), penalty (α of α·Σexp(−t)): row pruning.
    budget (bytes) or budget_ratio (of `full`'s bytes): what the searched tables (kept rows ×
    width, plus an int32 remap per id of a pruned table) may take; unset: no limit.
    supernet_epochs / retrain_epochs: 0 means the run's train.epochs. generations, keep,
    mutations, crossovers, mutation_prob: the evolutionary search; search_rows: validation
    rows that score a candidate (0: all).
    """

    kind: ClassVar[str] = "optembed"
    dim: int = 16
    init_std: float = 0.01
    threshold_init: float = 0.0
    threshold_lr: float = 0.05  # the official 3e-4 suits Criteo's 45M rows; runs of hundreds of steps need more
    penalty: float = 3e-4
    budget: int = 0
    budget_ratio: float = 0.0
    supernet_epochs: int = 0
    retrain_epochs: int = 0
    generations: int = 10
    keep: int = 10
    mutations: int = 10
    crossovers: int = 10
    mutation_prob: float = 0.1
    search_rows: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        check_dim("OptEmbed", self.dim)
        if not self.init_std > 0:
            raise ValueError(f"OptEmbed.init_std must be > 0, got {self.init_std}")
        if not self.threshold_lr > 0:
            raise ValueError(f"OptEmbed.threshold_lr must be > 0, got {self.threshold_lr}")
        if self.penalty < 0:
            raise ValueError(f"OptEmbed.penalty must be >= 0, got {self.penalty}")
        check_budget_fields("OptEmbed", self.budget, self.budget_ratio)
        for name in ("supernet_epochs", "retrain_epochs", "search_rows", "keep", "mutations", "crossovers"):
            if getattr(self, name) < 0:
                raise ValueError(f"OptEmbed.{name} must be >= 0, got {getattr(self, name)}")
        if self.generations < 1:
            raise ValueError(f"OptEmbed.generations must be >= 1, got {self.generations}")
        if self.keep + self.mutations + self.crossovers < 1:
            raise ValueError("OptEmbed: keep + mutations + crossovers must be >= 1 (the population size)")
        if not 0 <= self.mutation_prob <= 1:
            raise ValueError(f"OptEmbed.mutation_prob must be in [0, 1], got {self.mutation_prob}")


@dataclass
class OptEmbedArch:
    """The searched architecture: per table, the kept raw ids (sorted; None: every row) and
    the width."""

    kept: dict[str, Tensor | None]
    widths: dict[str, int]
    extra: dict = field(default_factory=dict)  # what the search found out (scores), for the record

    def to_state(self) -> dict:
        return {"kept": self.kept, "widths": self.widths, "extra": self.extra}

    @classmethod
    def from_state(cls, state: dict) -> OptEmbedArch:
        return cls(state["kept"], state["widths"], state.get("extra", {}))


def serving_bytes(kept: dict[str, int], cardinality: dict[str, int], widths: dict[str, int]) -> int:
    """Bytes of the compact tables: kept rows × width fp32, and an int32 remap per raw id of
    each table that lost rows."""
    return sum(
        kept[t] * widths[t] * BYTES_PER_FLOAT + (REMAP_BYTES * cardinality[t] if kept[t] < cardinality[t] else 0)
        for t in widths
    )


class OptEmbedEmbedding(TableEmbedding):
    """The supernet (arch None) or the searched compact tables (see the module docstring)."""

    # the supernet's draw counter advances once per training forward on every rank alike
    # (recemb.distributed.state verifies it stays identical)
    replicated_state: ClassVar[tuple[str, ...]] = ("_steps",)

    def __init__(
        self, schema: Schema, cfg: OptEmbed, settings: StoreSettings, arch: OptEmbedArch | None = None
    ) -> None:
        super().__init__(schema, settings)
        self.cfg, self.arch = cfg, arch
        tables = schema.tables()
        self.table_names = list(tables)
        self.cardinality = {t: m[0].cardinality for t, m in tables.items()}
        self.prunable = [t for t, m in tables.items() if all(f.kind != "multi_hot" for f in m)]
        index = {t: i for i, t in enumerate(self.table_names)}
        self.register_buffer(
            "_pooled_table",
            torch.tensor([index[f.table_name] for f in schema.pooled], dtype=torch.long),
            persistent=False,
        )
        self._sequence_table = {f.name: index[f.table_name] for f in schema.sequences}
        self.search_widths: Tensor | None = None  # [T] widths the search evaluates
        if arch is None:
            self._init_supernet()
        else:
            self._init_searched(arch)
        self._build_store()

    # -- construction ---------------------------------------------------------------------
    def _init_supernet(self) -> None:
        thr = {t: i for i, t in enumerate(self.prunable)}
        self.thresholds = nn.Parameter(torch.full((len(thr),), float(self.cfg.threshold_init))) if thr else None
        pooled = [f.table_name for f in self.schema.pooled]
        self.register_buffer(
            "_pooled_thr", torch.tensor([thr.get(t, 0) for t in pooled], dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "_pooled_prunable", torch.tensor([t in thr for t in pooled], dtype=torch.bool), persistent=False
        )
        self._sequence_thr = {f.name: thr[f.table_name] for f in self.schema.sequences if f.table_name in thr}
        # sampled forwards so far: the seed of the next width sample (a buffer, so a loaded
        # state samples what the saved module would have)
        self.register_buffer("_steps", torch.zeros((), dtype=torch.int64))
        self._order, self._permute = list(range(len(self.schema.sparse))), None

    def _init_searched(self, arch: OptEmbedArch) -> None:
        missing = sorted(set(self.table_names) - set(arch.widths))
        if missing:
            raise ValueError(f"OptEmbedArch.widths lacks tables {missing}; it has {sorted(arch.widths)}")
        for t in self.table_names:
            check_width("OptEmbedArch", f"widths[{t!r}]", arch.widths[t], self.cfg.dim)
            if arch.kept.get(t) is not None and t not in self.prunable:
                raise ValueError(
                    f"OptEmbedArch prunes table {t!r}, which a multi-hot feature reads; it cannot be pruned"
                )
        self.kept_count = {}
        remap, kept_flag = [], []
        for t in self.table_names:
            n, ids = self.cardinality[t], arch.kept.get(t)
            if ids is None:
                rows, flag = torch.arange(n), torch.ones(n, dtype=torch.bool)
                self.kept_count[t] = n
            else:
                ids = torch.as_tensor(ids, dtype=torch.long)
                if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n or bool((ids.diff() <= 0).any())):
                    raise ValueError(f"OptEmbedArch.kept[{t!r}] must be sorted unique ids in [0, {n})")
                rows = torch.full((n,), ids.numel(), dtype=torch.long)  # pruned ids read the null row
                rows[ids] = torch.arange(ids.numel())
                flag = torch.zeros(n, dtype=torch.bool)
                flag[ids] = True
                self.kept_count[t] = ids.numel()
            remap.append(rows)
            kept_flag.append(flag)
        self.register_buffer("_remap", torch.cat(remap), persistent=False)  # raw id (+ table offset) -> row
        self.register_buffer("_kept", torch.cat(kept_flag), persistent=False)
        offsets = torch.tensor([0, *self.cardinality.values()]).cumsum(0)[:-1]
        table_offset = dict(zip(self.table_names, offsets.tolist()))
        self.register_buffer(
            "_feature_offset", torch.tensor([table_offset[f.table_name] for f in self.schema.sparse]), persistent=False
        )
        self._pruned = {t for t in self.table_names if self.kept_count[t] < self.cardinality[t]}
        self._order = width_order(self.schema, arch.widths)
        self._permute = self._order if self._order != sorted(self._order) else None

    @property
    def dim(self) -> int:
        return self.cfg.dim

    @property
    def searched(self) -> bool:
        return self.arch is not None

    def layout(self) -> StoreLayout:
        if self.arch is None:
            tables = tuple(
                TableSpec(t, self.cardinality[t], self.cfg.dim, init_std=self.cfg.init_std) for t in self.table_names
            )
        else:
            tables = tuple(
                TableSpec(t, self.kept_count[t] + (t in self._pruned), self.arch.widths[t], init_std=self.cfg.init_std)
                for t in self.table_names
            )
        return StoreLayout(tables, store_lookups(self.schema, self._order))

    # -- id transform ---------------------------------------------------------------------
    def _global_ids(self, kjt: KeyedJaggedTensor) -> Tensor:
        """[nnz]: each raw id plus its table's offset in the concatenated remap."""
        counts = torch.tensor(kjt.length_per_key(), device=kjt.values().device)
        offsets = torch.repeat_interleave(self._feature_offset, counts, output_size=kjt.values().numel())
        return kjt.values().long() + offsets

    def store_input(self, kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        self.check_id_range(kjt)
        if self.arch is None:
            return kjt
        rows = self._remap[self._global_ids(kjt)]
        out = KeyedJaggedTensor(
            keys=kjt.keys(), values=rows, lengths=kjt.lengths(), offsets=kjt.offsets(), stride=kjt.stride()
        )
        return out if self._permute is None else out.permute(self._permute)  # ascending widths (mixed_dim.width_order)

    # -- combine ----------------------------------------------------------------------------
    def combine_output(self, out: Tensor, kjt: KeyedJaggedTensor) -> Embedded:
        return self._supernet(out, kjt) if self.arch is None else self._searched(out, kjt)

    def _supernet(self, out: Tensor, kjt: KeyedJaggedTensor) -> Embedded:
        emb = self.split_store_output(out, kjt)
        pooled, sequences = emb.pooled, dict(emb.sequences)  # [B, Fp, D], name -> ([B, L, D], mask)
        if self.thresholds is not None:
            if pooled.shape[1]:
                gate = binary_step(pooled.abs().sum(-1) - self.thresholds[self._pooled_thr])  # [B, Fp]
                gate = torch.where(self._pooled_prunable, gate, torch.ones_like(gate))
                pooled = pooled * gate.unsqueeze(-1)
            for name, i in self._sequence_thr.items():
                x, mask = sequences[name]
                sequences[name] = (x * binary_step(x.abs().sum(-1) - self.thresholds[i]).unsqueeze(-1), mask)
        masks = self._width_masks(kjt.stride(), out.device)  # [B or 1, T, D]
        if masks is not None:
            pooled = pooled * masks[:, self._pooled_table]
            for name, i in self._sequence_table.items():
                x, mask = sequences[name]
                sequences[name] = (x * masks[:, i].unsqueeze(1), mask)
        return Embedded(pooled, sequences)

    def _width_masks(self, batch: int, device: torch.device) -> Tensor | None:
        """[B, T, D] sampled masks in training (autograd on), [1, T, D] the search's widths, or
        None (every column)."""
        if self.training and torch.is_grad_enabled():
            return width_mask(self._sample_widths(batch).to(device), self.cfg.dim)
        if self.search_widths is not None:
            return width_mask(self.search_widths.to(device), self.cfg.dim).unsqueeze(0)
        return None

    def _sample_widths(self, batch: int) -> Tensor:
        """[B, T] this step's widths. They are drawn for the whole global batch and this
        process keeps its share's rows (recemb.distributed.share), so ranks that each train
        on a part of the batch draw what one process training on all of it draws; `_steps`
        seeds the draw and advances alike on every rank (it is replicated state)."""
        seed = self.cfg.seed * 1_000_003 + int(self._steps)
        self._steps += 1
        index, count = batch_share()
        widths = sample_widths(batch * count, len(self.table_names), self.cfg.dim, seed)  # [count * B, T]
        return widths[index * batch : (index + 1) * batch]

    def _searched(self, out: Tensor, kjt: KeyedJaggedTensor) -> Embedded:
        batch, dim = kjt.stride(), self.cfg.dim
        slices = self.store.layout.column_slices()
        by_key = dict(zip(slices, out.split([s.stop - s.start for s in slices.values()], dim=1)))
        kept = self._kept[self._global_ids(kjt)] if self._pruned else None  # [nnz]
        starts = [0, *torch.tensor(kjt.length_per_key()).cumsum(0).tolist()]
        lengths = kjt.lengths().view(len(self._keys), batch)
        pooled, sequences = [], {}
        for i, spec in enumerate(self.schema.sparse):
            part = by_key[spec.name]
            pruned = kept is not None and spec.table_name in self._pruned
            if spec.is_sequence:
                x = part.view(batch, spec.max_len, -1)
                if pruned:
                    offsets = kjt[spec.name].offsets()
                    flags = torch.ops.fbgemm.jagged_1d_to_dense(
                        kept[starts[i] : starts[i + 1]].long(), offsets, spec.max_len, 0
                    )
                    x = x * flags.unsqueeze(-1).to(x.dtype)  # [B, L, w]
                mask = torch.arange(spec.max_len, device=out.device).unsqueeze(0) < lengths[i].unsqueeze(1)
                sequences[spec.name] = (F.pad(x, (0, dim - x.shape[-1])), mask)
            else:
                if pruned:  # a pruned table is read by single-valued features only: one id per sample
                    part = part * kept[starts[i] : starts[i + 1]].unsqueeze(1).to(part.dtype)
                pooled.append(F.pad(part, (0, dim - part.shape[-1])))
        stacked = torch.stack(pooled, dim=1) if pooled else out.new_zeros(batch, 0, dim)
        return Embedded(stacked, sequences)

    # -- stages -------------------------------------------------------------------------------
    @torch.no_grad()
    def kept_rows(self, norms: dict[str, Tensor] | None = None) -> dict[str, Tensor | None]:
        """The supernet's kept ids per table now (None: a table that is never pruned).
        `norms` gives each prunable table's row L1 norms [rows] where the store cannot hand
        out whole tables (sharded: recemb.distributed.shard.table_row_norms); by default
        they are read from the store."""
        if self.arch is not None:
            raise ValueError("kept_rows reads a supernet; this OptEmbed table is already searched")
        if norms is None:
            weights = self.store.table_weights()
            norms = {t: weights[t].abs().sum(1) for t in self.prunable}
        missing = sorted(set(self.prunable) - set(norms))
        if missing:
            raise KeyError(f"kept_rows: norms lacks the prunable tables {missing}; it has {sorted(norms)}")
        out: dict[str, Tensor | None] = {t: None for t in self.table_names}
        for i, t in enumerate(self.prunable):
            out[t] = torch.nonzero(norms[t] - self.thresholds[i].detach().to(norms[t].device) > 0).flatten().cpu()
        return out

    def compact_initial(self, initial: Iterable[tuple[str, Tensor]]) -> Iterator[tuple[str, Tensor]]:
        """(table, weights) of the searched tables from the supernet's initial (table,
        weights), one table at a time (so a sharded store can take them without every
        table at once): kept rows, first `width` columns, the null row zero."""
        if self.arch is None:
            raise ValueError("compact_initial makes searched tables; this OptEmbed table is the supernet")
        for t, full in initial:
            w = full[:, : self.arch.widths[t]]
            if t in self._pruned:
                w = torch.cat([w[torch.as_tensor(self.arch.kept[t], dtype=torch.long)], w.new_zeros(1, w.shape[1])])
            yield t, w

    def load_initial(self, initial: dict[str, Tensor]) -> None:
        """Searched tables from the supernet's initial weights (see `compact_initial`)."""
        self.store.load_table_weights(dict(self.compact_initial((t, initial[t]) for t in self.table_names)))

    def serving_bytes(self) -> int:
        """What the export's fp32 tables take (no null rows)."""
        return serving_bytes(self.kept_count, self.cardinality, self.arch.widths)

    def memory(self) -> MemoryReport:
        report = super().memory()
        if self.arch is None:
            return report
        remap = REMAP_BYTES * sum(self.cardinality[t] for t in self._pruned)  # as exported (int32)
        return MemoryReport(report.params, report.bytes + remap, report.optimizer_bytes)

    # -- export ---------------------------------------------------------------------------------
    def export_tables(self) -> dict[str, list[dict]]:
        """Compact blocks for recemb.export: kept rows only, an int32 remap (-1: pruned)."""
        if self.arch is None:
            raise ValueError(
                "this OptEmbed table is the supernet: export needs the searched tables (kept rows and widths); "
                "train with `recemb train --table optembed:...`, which runs the search and the retraining"
            )
        weights = self.store.table_weights()
        out: dict[str, list[dict]] = {}
        for t in self.table_names:
            n, count = self.cardinality[t], self.kept_count[t]
            block = {"lo": 0, "hi": n, "weight": weights[t][:count]}  # the first `width` columns
            if t in self._pruned:
                remap = torch.full((n,), -1, dtype=torch.int32)
                ids = torch.as_tensor(self.arch.kept[t], dtype=torch.long)
                remap[ids] = torch.arange(count, dtype=torch.int32)
                block["remap"] = remap
            out[t] = [block] if count else []
        return out
