"""ROBE-Z (Desai et al., "Random Offset Block Embedding", MLSys 2022): every feature's vectors
are read from one flat array of `size` floats; the vector of (feature, id) is dim/Z blocks
of Z contiguous values, block j starting at a hashed offset h_j(feature, id), wrapping
around the end of the array.

Deviation: offsets are multiples of `align` floats, not any float. The array is a store
table of size/align rows of `align` floats (the TBE store's rows are multiples of 4 wide),
a block is Z/align consecutive rows from the hashed one, modulo the rows (so reads wrap
around), and a vector is dim/align rows concatenated. Concatenation is linear, so bags pool
exactly through the store. `align=1` is the paper's any-offset array (the reference store
only: TBE refuses tables 1 wide); align = Z puts blocks at multiples of Z.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from recemb.features import Schema
from recemb.hashing import Runs, feature_salt, hash_to_buckets
from recemb.storage import StoreSettings, TableSpec
from recemb.storage.layout import BYTES_PER_FLOAT
from recemb.tables.budget import budget_floats, check_budget_fields, full_bytes, too_small
from recemb.tables.hashed import STORE_DIM_MULTIPLE, Probe, ProbeEmbedding

DEFAULT_SIZE = 2**22
TABLE = "robe"


@dataclass(frozen=True)
class Robe:
    """Settings for RobeEmbedding.

    size: floats in the shared array (a multiple of `align`), default 2**22 but never more
    than `full` would take; or set by budget (bytes) / budget_ratio (of `full`'s bytes).
    block: Z, contiguous values per hashed offset (divides dim). align: offsets are
    multiples of it (divides block; 4 for the TBE store, 1 for the paper's any offset).
    """

    kind: ClassVar[str] = "robe"
    dim: int = 16
    size: int | None = None
    block: int = 8
    align: int = STORE_DIM_MULTIPLE
    budget: int = 0
    budget_ratio: float = 0.0
    seed: int = 0
    init_std: float = 0.01

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"Robe.dim must be >= 1, got {self.dim}")
        if self.block < 1 or self.dim % self.block:
            raise ValueError(f"Robe.block must be >= 1 and divide dim={self.dim}, got {self.block}")
        if self.align < 1 or self.block % self.align:
            raise ValueError(f"Robe.align must be >= 1 and divide block={self.block}, got {self.align}")
        if not self.init_std > 0:
            raise ValueError(f"Robe.init_std must be > 0, got {self.init_std}")
        check_budget_fields("Robe", self.budget, self.budget_ratio, size=self.size)
        if self.size is not None and (self.size % self.align or self.size < self.block):
            raise ValueError(
                f"Robe.size must be a multiple of align={self.align} and at least block={self.block}, got {self.size}"
            )


class RobeEmbedding(ProbeEmbedding):
    """Feature C1 reads keys `C1#0`..`C1#{dim/align - 1}` of table `robe`: key i is row
    i mod (Z/align) of block i // (Z/align), counted from the block's hashed row."""

    hash_args = ("salt",)

    def __init__(self, schema: Schema, cfg: Robe, settings: StoreSettings) -> None:
        super().__init__(schema, settings)
        self.cfg = cfg
        self.rows = self._size(schema) // cfg.align
        per_block = cfg.block // cfg.align
        probes = []  # key i: row i % per_block of block i // per_block, which has its own salt
        for f in schema.sparse:
            salts = [feature_salt(cfg.seed, f.table_name, j) for j in range(cfg.dim // cfg.block)]
            keys = range(cfg.dim // cfg.align)
            probes.append([Probe(f"{f.name}#{i}", TABLE, {"salt": salts[i // per_block]}) for i in keys])
        self._block_start: Tensor | None = None  # rows of the block being read (store_rows)
        self._setup([TableSpec(TABLE, self.rows, cfg.align, init_std=cfg.init_std)], probes)

    def _size(self, schema: Schema) -> int:
        cfg = self.cfg
        floats = budget_floats(cfg.budget, cfg.budget_ratio, schema, cfg.dim)
        if floats is None:
            full = full_bytes(schema, cfg.dim) // BYTES_PER_FLOAT
            size = cfg.size or min(DEFAULT_SIZE, full)
            return max(size // cfg.align * cfg.align, cfg.block)
        size = floats // cfg.align * cfg.align
        if size < cfg.block:
            need = cfg.block * BYTES_PER_FLOAT
            raise too_small("Robe", cfg.budget, cfg.budget_ratio, need, f"one block of {cfg.block} floats")
        return size

    @property
    def dim(self) -> int:
        return self.cfg.dim

    def block_starts(self, ids: Tensor, feature: str, block: int) -> Tensor:
        """The array row each id's block `block` starts at (of `feature`'s logical table)."""
        salt = feature_salt(self.cfg.seed, self.schema.feature(feature).table_name, block)
        return hash_to_buckets(ids, salt, self.rows)

    def store_rows(self, ids: Tensor, args: dict[str, int | Tensor | Runs], probe: int) -> Tensor:
        shift = probe % (self.cfg.block // self.cfg.align)  # row of the block
        if shift == 0:  # a block's first probe hashes; the next ones (called next) follow it
            self._block_start = hash_to_buckets(ids, args["salt"], self.rows)
            return self._block_start
        start = self._block_start
        if start.device.type == "cpu":  # numpy's int64 add and masked subtract: 3x torch's here
            wrapped = start.numpy() + shift
            np.subtract(wrapped, self.rows, out=wrapped, where=wrapped >= self.rows)
            return torch.from_numpy(wrapped)
        rows = start + shift
        return torch.where(rows >= self.rows, rows - self.rows, rows)  # wrap around the array's end

    def combine(self, parts: list[Tensor], feature: int | None) -> Tensor:
        return torch.cat(parts, dim=-1)
