"""recemb: embedding tables for recommendation and CTR models."""

import logging as _logging

# torchrec's import makes torch.fx log a deprecation notice meant for torch's own
# developers; it says nothing about recemb or the user's code.
_logging.getLogger("torch.fx._symbolic_trace").addFilter(lambda record: "is_fx_tracing" not in record.getMessage())

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
