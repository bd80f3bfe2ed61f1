"""Table kinds: the registry, `build_embedding`, and parsing of "kind:key=value,..."."""

from __future__ import annotations

from typing import Any

from recemb.config import closest, from_mapping, parse_settings
from recemb.features import Schema
from recemb.storage import StoreSettings
from recemb.tables.base import Embedded, TableEmbedding
from recemb.tables.double_hash import DoubleHash, DoubleHashEmbedding
from recemb.tables.full import Full, FullEmbedding
from recemb.tables.hash_embedding import HashEmbedding, HashEmbeddingEmbedding
from recemb.tables.hashed import Hashed, HashedEmbedding
from recemb.tables.qr import QR, QREmbedding
from recemb.tables.robe import Robe, RobeEmbedding
from recemb.tables.unified import Unified, UnifiedEmbedding

# kind name -> (config dataclass, module class)
KINDS: dict[str, type] = {
    "full": Full,
    "hashed": Hashed,
    "double_hash": DoubleHash,
    "qr": QR,
    "hash_embedding": HashEmbedding,
    "robe": Robe,
    "unified": Unified,
}
_MODULES: dict[str, type[TableEmbedding]] = {
    "full": FullEmbedding,
    "hashed": HashedEmbedding,
    "double_hash": DoubleHashEmbedding,
    "qr": QREmbedding,
    "hash_embedding": HashEmbeddingEmbedding,
    "robe": RobeEmbedding,
    "unified": UnifiedEmbedding,
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
