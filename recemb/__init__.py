"""recemb: embedding tables for recommendation and CTR models."""

from recemb.features import FeatureSpec, Schema
from recemb.storage import EmbeddingOptimizer, StoreSettings
from recemb.tables import KINDS, Full, build_embedding, parse_table

__all__ = [
    "KINDS",
    "EmbeddingOptimizer",
    "FeatureSpec",
    "Full",
    "Schema",
    "StoreSettings",
    "build_embedding",
    "parse_table",
]
