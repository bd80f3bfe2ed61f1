"""Unified Embedding / feature multiplexing (Coleman et al., NeurIPS 2023): every feature hashes
into one shared table (or a few sub-tables) with its own salts; a feature may take several
chunks, each a lookup with its own salt, concatenated, so features get different widths
from one row budget.

Deviation: the chunk width is w = dim / max_chunks and a feature of c chunks is c·w wide;
where c·w != dim a learned linear map (no bias, one per logical table) takes it to dim, so
every feature comes out `dim` wide for models that need one width (AutoInt's attention). In
the paper the concatenation feeds the DNN directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from recemb.features import Schema
from recemb.hashing import Runs, feature_salt, hash_to_buckets
from recemb.storage import StoreSettings, TableSpec
from recemb.storage.layout import BYTES_PER_FLOAT
from recemb.tables.budget import budget_floats, check_budget_fields, too_small
from recemb.tables.hashed import DEFAULT_BUCKETS, STORE_DIM_MULTIPLE, Probe, ProbeEmbedding

TABLE = "unified"


def parse_chunks(entries: tuple[str, ...]) -> dict[str, int]:
    """("C1=2", "C7=3") -> {"C1": 2, "C7": 3}."""
    out = {}
    for entry in entries:
        name, sep, count = entry.partition("=")
        if not sep or not name.strip() or not count.strip().isdigit() or int(count) < 1:
            raise ValueError(
                f"Unified.chunks_per_feature entries must look like 'feature=chunks' with chunks >= 1, got {entry!r}"
            )
        out[name.strip()] = int(count)
    return out


@dataclass(frozen=True)
class Unified:
    """Settings for UnifiedEmbedding.

    rows: rows of the shared table (split evenly over `tables` sub-tables), default 2**18
    but never more than the ids could use; or set by budget (bytes) / budget_ratio (of
    `full`'s bytes), which also pays for the projections. chunks: lookups per feature;
    chunks_per_feature: overrides, ("C1=2", "C7=3") or "C1=2;C7=3" (features sharing a
    table take the most chunks any of them is given). Sub-tables are assigned round robin
    over all logical tables' chunks.
    """

    kind: ClassVar[str] = "unified"
    dim: int = 16
    rows: int | None = None
    tables: int = 1
    chunks: int = 1
    chunks_per_feature: tuple[str, ...] = ()
    budget: int = 0
    budget_ratio: float = 0.0
    seed: int = 0
    init_std: float = 0.01

    def __post_init__(self) -> None:
        if isinstance(self.chunks_per_feature, str):
            entries = tuple(e.strip() for e in self.chunks_per_feature.split(";") if e.strip())
            object.__setattr__(self, "chunks_per_feature", entries)
        if self.dim < 1:
            raise ValueError(f"Unified.dim must be >= 1, got {self.dim}")
        if self.tables < 1:
            raise ValueError(f"Unified.tables must be >= 1, got {self.tables}")
        if self.chunks < 1:
            raise ValueError(f"Unified.chunks must be >= 1, got {self.chunks}")
        most = max([self.chunks, *parse_chunks(self.chunks_per_feature).values()])
        if self.dim % (most * STORE_DIM_MULTIPLE):
            raise ValueError(
                f"Unified.dim={self.dim} must be a multiple of {STORE_DIM_MULTIPLE} x the most chunks of a feature "
                f"({most}): chunks are dim/{most} wide, and the TBE store's widths are multiples of "
                f"{STORE_DIM_MULTIPLE}"
            )
        if not self.init_std > 0:
            raise ValueError(f"Unified.init_std must be > 0, got {self.init_std}")
        check_budget_fields("Unified", self.budget, self.budget_ratio, rows=self.rows)

    @property
    def chunk_dim(self) -> int:
        return self.dim // max([self.chunks, *parse_chunks(self.chunks_per_feature).values()])


class UnifiedEmbedding(ProbeEmbedding):
    """Feature C1 of c chunks reads keys `C1#0`..`C1#{c-1}` from the shared table(s); its
    chunks are concatenated (and projected to dim when c·w != dim)."""

    hash_args = ("salt",)

    def __init__(self, schema: Schema, cfg: Unified, settings: StoreSettings) -> None:
        super().__init__(schema, settings)
        self.cfg = cfg
        overrides = parse_chunks(cfg.chunks_per_feature)
        unknown = sorted(set(overrides) - set(schema.names))
        if unknown:
            raise ValueError(
                f"Unified.chunks_per_feature names unknown features {unknown}; the schema has {list(schema.names)}"
            )
        w = cfg.chunk_dim
        # chunks per logical table, so a target item and its history read the same rows
        chunks = {t: max(overrides.get(f.name, cfg.chunks) for f in members) for t, members in schema.tables().items()}
        # a list, not a ModuleDict: table names may hold "." or be "keys", which a ModuleDict refuses
        projected = [t for t, c in chunks.items() if c * w != cfg.dim]
        self.projections = nn.ModuleList(nn.Linear(chunks[t] * w, cfg.dim, bias=False) for t in projected)
        self._projection_of = {t: i for i, t in enumerate(projected)}
        self.rows = self._rows(schema, chunks, w)
        names = [TABLE] if cfg.tables == 1 else [f"{TABLE}#{s}" for s in range(cfg.tables)]
        first, start = {}, 0
        for t, c in chunks.items():  # sub-tables round robin over the logical tables' chunks
            first[t], start = start, start + c
        probes = [
            [
                Probe(f"{f.name}#{j}", names[(first[t] + j) % cfg.tables], {"salt": feature_salt(cfg.seed, t, j)})
                for j in range(chunks[t])
            ]
            for f, t in ((f, f.table_name) for f in schema.sparse)
        ]
        self._setup([TableSpec(n, self.rows, w, init_std=cfg.init_std) for n in names], probes)
        self._fast = self._fast and not self.projections

    def _rows(self, schema: Schema, chunks: dict[str, int], w: int) -> int:
        """Rows of each sub-table."""
        cfg = self.cfg
        floats = budget_floats(cfg.budget, cfg.budget_ratio, schema, cfg.dim)
        if floats is None:
            # more rows than (id, chunk) pairs would only stay empty
            keys = sum(members[0].cardinality * chunks[t] for t, members in schema.tables().items())
            return max(1, min(cfg.rows or DEFAULT_BUCKETS, keys) // cfg.tables)
        projection = sum(p.numel() for p in self.projections.parameters())
        rows = (floats - projection) // w // cfg.tables
        if rows < 1:
            need = (projection + cfg.tables * w) * BYTES_PER_FLOAT
            raise too_small("Unified", cfg.budget, cfg.budget_ratio, need, "the projections and 1 row per sub-table")
        return rows

    @property
    def dim(self) -> int:
        return self.cfg.dim

    def store_rows(self, ids: Tensor, args: dict[str, int | Tensor | Runs], probe: int) -> Tensor:
        return hash_to_buckets(ids, args["salt"], self.rows)

    def combine(self, parts: list[Tensor], feature: int | None) -> Tensor:
        x = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]  # [..., c * w]
        if feature is None:
            return x  # every feature has dim/w chunks: already dim wide
        projection = self.projection(self.schema.sparse[feature].table_name)
        return x if projection is None else projection(x)

    def projection(self, table: str) -> nn.Linear | None:
        """The map of a logical table's features to dim, if they are not dim wide."""
        return self.projections[self._projection_of[table]] if table in self._projection_of else None
