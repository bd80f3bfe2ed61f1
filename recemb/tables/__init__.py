"""Table kinds: the registry, `build_embedding`, and parsing of "kind:key=value,..."."""

from __future__ import annotations

from typing import Any

from recemb.config import closest, from_mapping, parse_settings
from recemb.features import Schema
from recemb.storage import StoreSettings
from recemb.tables.base import Embedded, TableEmbedding
from recemb.tables.decoupled import Decoupled, DecoupledEmbedding
from recemb.tables.double_hash import DoubleHash, DoubleHashEmbedding
from recemb.tables.full import Full, FullEmbedding
from recemb.tables.hash_embedding import HashEmbedding, HashEmbeddingEmbedding
from recemb.tables.hashed import Hashed, HashedEmbedding
from recemb.tables.qr import QR, QREmbedding
from recemb.tables.robe import Robe, RobeEmbedding
from recemb.tables.unified import Unified, UnifiedEmbedding
from recemb.tables.optembed import OptEmbed, OptEmbedEmbedding
from recemb.tables.mixed_dim import MixedDim, MixedDimEmbedding
from recemb.tables.dnis import Dnis, DnisEmbedding

# kind name -> (config dataclass, module class)
KINDS: dict[str, type] = {
    "full": Full,
    "decoupled": Decoupled,
    "hashed": Hashed,
    "double_hash": DoubleHash,
    "qr": QR,
    "hash_embedding": HashEmbedding,
    "robe": Robe,
    "unified": Unified,
    "optembed": OptEmbed,
    "mixed_dim": MixedDim,
    "dnis": Dnis,
}
_MODULES: dict[str, type[TableEmbedding]] = {
    "full": FullEmbedding,
    "decoupled": DecoupledEmbedding,
    "hashed": HashedEmbedding,
    "double_hash": DoubleHashEmbedding,
    "qr": QREmbedding,
    "hash_embedding": HashEmbeddingEmbedding,
    "robe": RobeEmbedding,
    "unified": UnifiedEmbedding,
    "optembed": OptEmbedEmbedding,
    "mixed_dim": MixedDimEmbedding,
    "dnis": DnisEmbedding,
}


def kind_config(kind: str) -> type:
    if kind not in KINDS:
        raise ValueError(f"unknown table kind {kind!r}{closest(kind, KINDS)}; known kinds: {sorted(KINDS)}")
    return KINDS[kind]


def parse_table(text: str) -> Any:
    """'unified:dim=16,budget_ratio=0.1' -> the kind's config dataclass."""
    kind, _, settings = text.partition(":")
    return from_mapping(kind_config(kind.strip()), parse_settings(settings))


def table_from_mapping(values: dict[str, Any]) -> Any:
    """{'kind': 'full', 'dim': 16} (a config file's `table` section) -> config dataclass."""
    values = dict(values)
    kind = values.pop("kind", "full")
    return from_mapping(kind_config(kind), values)


def build_embedding(schema: Schema, cfg: Any, settings: StoreSettings | None = None) -> TableEmbedding:
    """The embedding module of kind `cfg.kind` for `schema`, its tables in one store."""
    kind = getattr(cfg, "kind", None)
    if kind not in _MODULES:
        raise TypeError(f"cfg must be a table config ({sorted(KINDS)}), got {type(cfg).__name__}")
    return _MODULES[kind](schema, cfg, settings or StoreSettings())


__all__ = [
    "KINDS",
    "QR",
    "Decoupled",
    "Dnis",
    "DnisEmbedding",
    "MixedDim",
    "MixedDimEmbedding",
    "OptEmbed",
    "OptEmbedEmbedding",
    "DecoupledEmbedding",
    "DoubleHash",
    "DoubleHashEmbedding",
    "Embedded",
    "Full",
    "FullEmbedding",
    "HashEmbedding",
    "HashEmbeddingEmbedding",
    "Hashed",
    "HashedEmbedding",
    "QREmbedding",
    "Robe",
    "RobeEmbedding",
    "TableEmbedding",
    "Unified",
    "UnifiedEmbedding",
    "build_embedding",
    "parse_table",
]
