"""Criteo-like synthetic sparse input: Zipf-distributed ids, one per sample and feature.

Real click logs are heavy-tailed: a few ids take most lookups. The ids here follow a Zipf
law over each feature's cardinality, with the popularity ranks scrambled by a seeded
permutation so hot ids land all over the table (as hashed or vocabulary-encoded ids do),
not packed into its first rows, which would flatter every cache.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.data.batch import kjt_from_ids
from recemb.features import FeatureSpec, Schema

# the 26 categorical features of the Criteo Kaggle display-ads data set (C1..C26)
CRITEO_CARDINALITIES: tuple[int, ...] = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip


def criteo_schema(features: int = 26, cap: int = 1_000_000) -> Schema:
    """The first `features` Criteo features C1.., each cardinality capped at `cap`."""
    if not 1 <= features <= len(CRITEO_CARDINALITIES):
        raise ValueError(f"features must be in [1, {len(CRITEO_CARDINALITIES)}], got {features}")
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    return Schema(
        tuple(FeatureSpec(f"C{i + 1}", min(c, cap)) for i, c in enumerate(CRITEO_CARDINALITIES[:features]))
    )


def zipf_ids(cardinality: int, count: int, exponent: float, generator: torch.Generator) -> Tensor:
    """[count] int64 ids in [0, cardinality): rank k (1-based) drawn with probability
    proportional to k**-exponent, then mapped to an id by a random permutation."""
    ranks = torch.arange(1, cardinality + 1, dtype=torch.float64)
    cdf = torch.cumsum(ranks.pow_(-exponent), 0)
    u = torch.rand(count, dtype=torch.float64, generator=generator) * cdf[-1]
    drawn = torch.searchsorted(cdf, u).clamp_(max=cardinality - 1)  # [count] rank - 1
    return torch.randperm(cardinality, generator=generator)[drawn]


def zipf_batches(
    schema: Schema, batch: int, count: int, exponent: float = 1.1, seed: int = 0
) -> list[KeyedJaggedTensor]:
    """`count` distinct KJTs of `batch` samples, one id per feature, drawn by `zipf_ids`
    (each feature with its own permutation, shared by all batches)."""
    if batch < 1 or count < 1:
        raise ValueError(f"batch and count must be >= 1, got batch={batch}, count={count}")
    if exponent <= 0:
        raise ValueError(f"the Zipf exponent must be > 0, got {exponent}")
    gen = torch.Generator().manual_seed(seed)
    columns = [zipf_ids(f.cardinality, batch * count, exponent, gen) for f in schema.sparse]
    ids = torch.stack(columns, dim=1)  # [count * B, F]
    return [kjt_from_ids(part, schema.names) for part in ids.split(batch)]
