"""The full table: one row per raw id (the uncompressed baseline every kind is measured against)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.features import Schema
from recemb.storage import LookupSpec, StoreLayout, StoreSettings, TableSpec
from recemb.tables.base import Embedded, TableEmbedding

OOV_POLICIES = ("error", "row")


@dataclass(frozen=True)
class Full:
    """Settings for FullEmbedding.

    oov: `error` refuses ids outside [0, cardinality); `row` reserves one extra row per
    table that every such id (negative ids included) reads.
    """

    kind: ClassVar[str] = "full"
    dim: int = 16
    oov: str = "error"
    init_std: float = 0.01

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"Full.dim must be >= 1, got {self.dim}")
        if self.oov not in OOV_POLICIES:
            raise ValueError(f"Full.oov must be one of {OOV_POLICIES}, got {self.oov!r}")
        if not self.init_std > 0:
            raise ValueError(f"Full.init_std must be > 0, got {self.init_std}")


class FullEmbedding(TableEmbedding):
    """One table per feature, or one per shared table name; rows = cardinality (+1 for OOV)."""

    def __init__(self, schema: Schema, cfg: Full, settings: StoreSettings) -> None:
        super().__init__(schema, settings)
        self.cfg = cfg
        self._build_store()

    @property
    def dim(self) -> int:
        return self.cfg.dim

    def layout(self) -> StoreLayout:
        extra = 1 if self.cfg.oov == "row" else 0
        tables = tuple(
            TableSpec(name, members[0].cardinality + extra, self.cfg.dim, init_std=self.cfg.init_std)
            for name, members in self.schema.tables().items()
        )
        lookups = tuple(
            LookupSpec(f.name, f.table_name, "none" if f.is_sequence else f.pooling, f.max_len)
            for f in self.schema.sparse
        )
        return StoreLayout(tables, lookups)

    def store_input(self, kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        if self.cfg.oov == "error":
            self.check_id_range(kjt)
            return kjt
        # the OOV row of a table is its last: index `cardinality`
        values, cardinality = kjt.values(), self.values_cardinality(kjt)
        in_range = (values >= 0) & (values < cardinality)
        return KeyedJaggedTensor(
            keys=kjt.keys(),
            values=torch.where(in_range, values, cardinality),
            lengths=kjt.lengths(),
            offsets=kjt.offsets(),
            stride=kjt.stride(),
        )

    def combine_output(self, out: Tensor, kjt: KeyedJaggedTensor) -> Embedded:
        return self.split_store_output(out, kjt)
