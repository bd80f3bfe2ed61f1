"""What a store holds: physical tables, and the lookups (KJT keys) that read them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType

Pooling = Literal["sum", "mean", "none"]
BYTES_PER_FLOAT = 4


@dataclass(frozen=True)
class TableSpec:
    """A physical table of `rows` x `dim` fp32 weights, initialised N(0, init_std²)
    or, when `init_bound` > 0, U(-init_bound, init_bound)."""

    name: str
    rows: int
    dim: int
    init_std: float = 0.01
    init_bound: float = 0.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("TableSpec.name must be a non-empty string")
        if self.init_std < 0:
            raise ValueError(f"TableSpec.init_std of table {self.name!r} must be >= 0, got {self.init_std}")
        if self.init_bound < 0:
            raise ValueError(f"TableSpec.init_bound of table {self.name!r} must be >= 0, got {self.init_bound}")
        if self.rows < 1:
            raise ValueError(f"TableSpec.rows of table {self.name!r} must be >= 1, got {self.rows}")
        if self.dim < 1:
            raise ValueError(f"TableSpec.dim of table {self.name!r} must be >= 1, got {self.dim}")


@dataclass(frozen=True)
class LookupSpec:
    """One KJT key read from `table`: pooled per sample (`sum`/`mean`) or, for `none`,
    kept as an ordered sequence of at most `max_len` rows, returned padded."""

    key: str
    table: str
    pooling: Pooling = "sum"
    max_len: int = 0

    def __post_init__(self) -> None:
        if self.pooling not in ("sum", "mean", "none"):
            raise ValueError(f"LookupSpec.pooling of key {self.key!r} must be sum, mean or none, got {self.pooling!r}")
        if (self.pooling == "none") != (self.max_len > 0):
            raise ValueError(
                f"LookupSpec of key {self.key!r}: max_len must be > 0 exactly when pooling is 'none' "
                f"(got pooling={self.pooling!r}, max_len={self.max_len})"
            )

    @property
    def slots(self) -> int:
        """Output vectors per sample: 1 for a pooled key, max_len for a sequence."""
        return self.max_len if self.pooling == "none" else 1


@dataclass(frozen=True)
class StoreLayout:
    """Tables and lookups of one store; the output is [B, width], lookups' columns in order."""

    tables: tuple[TableSpec, ...]
    lookups: tuple[LookupSpec, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "tables", tuple(self.tables))
        object.__setattr__(self, "lookups", tuple(self.lookups))
        names = [t.name for t in self.tables]
        if len(set(names)) != len(names):
            raise ValueError(f"StoreLayout.tables has duplicated names: {names}")
        keys = [lk.key for lk in self.lookups]
        if len(set(keys)) != len(keys):
            raise ValueError(f"StoreLayout.lookups has duplicated keys: {keys}")
        for lk in self.lookups:
            if lk.table not in names:
                raise ValueError(f"lookup {lk.key!r} reads table {lk.table!r}, which is not among {names}")
        unread = [n for n in names if n not in {lk.table for lk in self.lookups}]
        if unread:
            raise ValueError(f"StoreLayout.tables {unread} are read by no lookup; every table needs a reader")

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(lk.key for lk in self.lookups)

    def table(self, name: str) -> TableSpec:
        return next(t for t in self.tables if t.name == name)

    def dim_of(self, key: str) -> int:
        return self.table(self.lookup(key).table).dim

    def lookup(self, key: str) -> LookupSpec:
        return next(lk for lk in self.lookups if lk.key == key)

    def column_slices(self) -> dict[str, slice]:
        """Each key's columns in the store output [B, width]."""
        out, start = {}, 0
        for lk in self.lookups:
            width = lk.slots * self.table(lk.table).dim
            out[lk.key] = slice(start, start + width)
            start += width
        return out

    @property
    def width(self) -> int:
        return sum(lk.slots * self.table(lk.table).dim for lk in self.lookups)

    def params(self) -> int:
        return sum(t.rows * t.dim for t in self.tables)

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """The physical tables as torchrec configs (what its planner and sharders read)."""
        configs = []
        for t in self.tables:
            readers = [lk for lk in self.lookups if lk.table == t.name]
            poolings = {lk.pooling for lk in readers if lk.pooling != "none"}
            if len(poolings) > 1:
                # torchrec pools per table: one of the readers would silently get the other's pooling
                raise ValueError(
                    f"table {t.name!r} is read with both sum and mean pooling "
                    f"({[(lk.key, lk.pooling) for lk in readers]}); torchrec pools per table, so an "
                    f"EmbeddingBagCollection cannot serve it"
                )
            mean = poolings == {"mean"}
            configs.append(
                EmbeddingBagConfig(
                    name=t.name,
                    num_embeddings=t.rows,
                    embedding_dim=t.dim,
                    feature_names=[lk.key for lk in readers],
                    pooling=PoolingType.MEAN if mean else PoolingType.SUM,
                    weight_init_min=-t.init_bound if t.init_bound else None,
                    weight_init_max=t.init_bound if t.init_bound else None,
                )
            )
        return configs

