"""Table kinds: the registry, `build_embedding`, and parsing of "kind:key=value,..."."""

from __future__ import annotations

from typing import Any

from recemb.config import closest, from_mapping, parse_settings
from recemb.features import Schema
from recemb.storage import StoreSettings
from recemb.tables.base import Embedded, TableEmbedding
from recemb.tables.full import Full, FullEmbedding

# kind name -> (config dataclass, module class)
KINDS: dict[str, type] = {"full": Full}
_MODULES: dict[str, type[TableEmbedding]] = {"full": FullEmbedding}


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


__all__ = ["KINDS", "Embedded", "Full", "FullEmbedding", "TableEmbedding", "build_embedding", "parse_table"]
