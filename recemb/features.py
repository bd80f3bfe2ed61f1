"""Feature specs and the schema of a CTR dataset: the data contract every table reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["single", "multi_hot", "sequence"]
KINDS_OF_FEATURE: tuple[str, ...] = ("single", "multi_hot", "sequence")


@dataclass(frozen=True)
class FeatureSpec:
    """One sparse feature.

    `cardinality` is the raw id space (ids are in [0, cardinality)); a table kind decides
    how many physical rows it gets. `kind` says how its ids come: one id per sample
    (`single`), a bag pooled by `pooling` (`multi_hot`), or an ordered history kept
    unpooled up to `max_len` most recent items (`sequence`). Features that name the same
    `table` share one table (e.g. a target item and the history of items).
    """

    name: str
    cardinality: int
    kind: Kind = "single"
    pooling: Literal["sum", "mean"] = "sum"
    max_len: int = 0
    table: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("FeatureSpec.name must be a non-empty string")
        if self.cardinality < 1:
            raise ValueError(
                f"FeatureSpec.cardinality of feature {self.name!r} must be >= 1, got {self.cardinality}"
            )
        if self.kind not in KINDS_OF_FEATURE:
            raise ValueError(
                f"FeatureSpec.kind of feature {self.name!r} must be one of {KINDS_OF_FEATURE}, got {self.kind!r}"
            )
        if self.pooling not in ("sum", "mean"):
            raise ValueError(
                f"FeatureSpec.pooling of feature {self.name!r} must be 'sum' or 'mean', got {self.pooling!r}"
            )
        if self.kind == "sequence" and self.max_len < 1:
            raise ValueError(
                f"FeatureSpec.max_len of sequence feature {self.name!r} must be >= 1, got {self.max_len}"
            )
        if self.kind != "sequence" and self.max_len != 0:
            raise ValueError(
                f"FeatureSpec.max_len is only for sequence features; {self.name!r} is {self.kind!r} "
                f"with max_len={self.max_len}"
            )

    @property
    def table_name(self) -> str:
        """The logical table this feature reads: its own unless it names a shared one."""
        return self.table or self.name

    @property
    def is_sequence(self) -> bool:
        return self.kind == "sequence"


@dataclass(frozen=True)
class Schema:
    """Sparse features (in order), dense feature names and the label of a dataset."""

    sparse: tuple[FeatureSpec, ...]
    dense: tuple[str, ...] = ()
    label: str = "label"
    _by_name: dict[str, FeatureSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparse", tuple(self.sparse))
        object.__setattr__(self, "dense", tuple(self.dense))
        if not self.sparse:
            raise ValueError("Schema.sparse must hold at least one feature")
        names = [f.name for f in self.sparse]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"Schema.sparse has duplicated feature names {duplicated}; names must be unique")
        object.__setattr__(self, "_by_name", {f.name: f for f in self.sparse})
        for table, members in self.tables().items():
            cards = {f.cardinality for f in members}
            if len(cards) > 1:
                raise ValueError(
                    f"features {[f.name for f in members]} share table {table!r} but have cardinalities "
                    f"{sorted(cards)}; features sharing a table must have one cardinality"
                )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.sparse)

    @property
    def pooled(self) -> tuple[FeatureSpec, ...]:
        return tuple(f for f in self.sparse if not f.is_sequence)

    @property
    def sequences(self) -> tuple[FeatureSpec, ...]:
        return tuple(f for f in self.sparse if f.is_sequence)

    def feature(self, name: str) -> FeatureSpec:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"unknown feature {name!r}; the schema has {list(self.names)}") from None

    def tables(self) -> dict[str, list[FeatureSpec]]:
        """Logical tables in first-use order, each with the features that read it."""
        out: dict[str, list[FeatureSpec]] = {}
        for f in self.sparse:
            out.setdefault(f.table_name, []).append(f)
        return out

    def to_dict(self) -> dict:
        return {
            "sparse": [vars(f).copy() for f in self.sparse],
            "dense": list(self.dense),
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Schema:
        return cls(
            sparse=tuple(FeatureSpec(**f) for f in d["sparse"]),
            dense=tuple(d.get("dense", ())),
            label=d.get("label", "label"),
        )
