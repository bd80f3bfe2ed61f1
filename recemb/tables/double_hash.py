"""Double (k-fold) hashing (Zhang et al., "Model Size Reduction Using Frequency Based Double
Hashing for Recommender Systems", RecSys 2020; k independent hashes of the hashing trick):
each id reads k rows, from one shared table or from k tables, summed or concatenated.

Deviations: every id is hashed k times (the paper's frequency-based variant keeps a full row
for frequent ids; that needs id counts, which a stateless hash kind does not have), except
in a table that holds a row per id: there each probe reads the id's own row, as `hashed`
does, since hashing would only make ids collide. With one shared table and `concat` that
would repeat one row k times in the output, so those tables stay hashed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from recemb.features import Schema
from recemb.hashing import feature_salt
from recemb.storage import StoreSettings, TableSpec
from recemb.tables.budget import check_budget_fields
from recemb.tables.hashed import STORE_DIM_MULTIPLE, Probe, ProbeEmbedding, own_rows, sized_rows

COMBINES = ("sum", "concat")


@dataclass(frozen=True)
class DoubleHash:
    """Settings for DoubleHashEmbedding.

    hashes: k >= 2 independent hashes per id. combine: `sum` (each probe `dim` wide) or
    `concat` (each probe dim/k wide, so the output stays `dim`). shared: one table per
    logical table read by all k hashes, else k tables. buckets: rows of each table,
    min(cardinality, buckets), default 2**18, or set by budget / budget_ratio.
    """

    kind: ClassVar[str] = "double_hash"
    dim: int = 16
    hashes: int = 2
    combine: str = "sum"
    shared: bool = True
    buckets: int | None = None
    budget: int = 0
    budget_ratio: float = 0.0
    seed: int = 0
    init_std: float = 0.01

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"DoubleHash.dim must be >= 1, got {self.dim}")
        if self.hashes < 2:
            raise ValueError(f"DoubleHash.hashes must be >= 2 (1 is the `hashed` kind), got {self.hashes}")
        if self.combine not in COMBINES:
            raise ValueError(f"DoubleHash.combine must be one of {COMBINES}, got {self.combine!r}")
        if self.combine == "concat":
            if self.dim % self.hashes:
                raise ValueError(
                    f"DoubleHash.dim={self.dim} must be divisible by hashes={self.hashes} with combine='concat' "
                    f"(each hash gives dim/hashes columns)"
                )
            step = self.hashes * STORE_DIM_MULTIPLE
            if self.dim % step:
                raise ValueError(
                    f"DoubleHash with combine='concat': dim/hashes = {self.dim}/{self.hashes} must be a multiple "
                    f"of {STORE_DIM_MULTIPLE} (the TBE store's table widths); pick "
                    f"dim={step * math.ceil(self.dim / step)} or combine='sum'"
                )
        if not self.init_std > 0:
            raise ValueError(f"DoubleHash.init_std must be > 0, got {self.init_std}")
        check_budget_fields("DoubleHash", self.budget, self.budget_ratio, buckets=self.buckets)

    @property
    def probe_dim(self) -> int:
        return self.dim // self.hashes if self.combine == "concat" else self.dim


class DoubleHashEmbedding(ProbeEmbedding):
    """Key `C1#i` reads hash i of C1's ids; the k vectors are summed or concatenated. A sum
    starts each table at init_std/sqrt(k), so the summed vector has a full table's spread."""

    def __init__(self, schema: Schema, cfg: DoubleHash, settings: StoreSettings) -> None:
        super().__init__(schema, settings)
        self.cfg = cfg
        k, width = cfg.hashes, cfg.probe_dim
        std = cfg.init_std / math.sqrt(k) if cfg.combine == "sum" else cfg.init_std
        logical = schema.tables()
        per_row = width * (1 if cfg.shared else k)  # a row of every table of a logical table
        demands = [m[0].cardinality for m in logical.values()]
        rows = dict(zip(logical, sized_rows("DoubleHash", cfg, schema, demands, per_row, cfg.buckets)))

        def table(name: str, i: int) -> str:
            return name if cfg.shared else f"{name}#{i}"

        tables = [
            TableSpec(table(name, i), rows[name], width, init_std=std)
            for name in logical
            for i in range(1 if cfg.shared else k)
        ]
        repeats = cfg.shared and cfg.combine == "concat"  # own rows would fill the output with one row
        own = {name: 0 if repeats else own_rows(rows[name], m[0].cardinality) for name, m in logical.items()}
        probes = [
            [
                Probe(
                    f"{f.name}#{i}",
                    table(t, i),
                    {"salt": feature_salt(cfg.seed, t, i), "rows": rows[t], "own_rows": own[t]},
                )
                for i in range(k)
            ]
            for f, t in ((f, f.table_name) for f in schema.sparse)
        ]
        self._setup(tables, probes)

    @property
    def dim(self) -> int:
        return self.cfg.dim

    def combine(self, parts: list[Tensor], feature: int | None) -> Tensor:
        if self.cfg.combine == "concat":
            return torch.cat(parts, dim=-1)  # [..., k * dim/k]
        out = parts[0]
        for part in parts[1:]:
            out = out + part
        return out
