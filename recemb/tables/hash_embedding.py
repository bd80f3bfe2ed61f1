"""Hash embeddings (Svenstrup et al., NIPS 2017): id x is sum_i p_i(x) · E[h_i(x)], k component
vectors hashed into a pool E of B rows, mixed by k importance weights p(x) hashed from a
second table of K rows.

Choices and deviations. The output is the weighted sum only (the paper's optional
concatenation of p(x) would make it dim + k wide). The importance table is stored ceil4(k)
wide (the TBE store's widths are multiples of 4) and only its first k columns are read;
the padding counts in the memory report. Bags: the pooled components and the pooled weights
are combined (sum_i P_i · C_i with P_i, C_i the bag's pooled weights and vectors), which for
single ids and sequences is exact and for bags of several ids is not the pooled per-id sum.
Init: weights N(0, 1) and components N(0, init_std²/k), so the sum starts with a full
table's spread. A pool or weight table that holds a row per id is read at each id's own row,
not hashed (as `hashed` does): the k components are then one vector, scaled by sum_i p_i(x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from recemb.features import Schema
from recemb.hashing import feature_salt
from recemb.storage import StoreSettings, TableSpec
from recemb.storage.layout import BYTES_PER_FLOAT
from recemb.tables.budget import budget_floats, check_budget_fields, fill_rows, too_small
from recemb.tables.hashed import DEFAULT_BUCKETS, STORE_DIM_MULTIPLE, Probe, ProbeEmbedding, own_rows

DEFAULT_WEIGHT_ROWS = 2**20


@dataclass(frozen=True)
class HashEmbedding:
    """Settings for HashEmbeddingEmbedding.

    hashes: k components per id. buckets: rows B of each logical table's component pool,
    min(cardinality, B), default 2**18. weight_rows: rows K of its importance table,
    min(cardinality, K), default 2**20. budget (bytes) / budget_ratio (of `full`'s bytes)
    set both instead, `weight_share` of the budget going to the importance tables.
    """

    kind: ClassVar[str] = "hash_embedding"
    dim: int = 16
    hashes: int = 2
    buckets: int | None = None
    weight_rows: int | None = None
    budget: int = 0
    budget_ratio: float = 0.0
    weight_share: float = 0.5
    seed: int = 0
    init_std: float = 0.01

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"HashEmbedding.dim must be >= 1, got {self.dim}")
        if self.hashes < 1:
            raise ValueError(f"HashEmbedding.hashes must be >= 1, got {self.hashes}")
        if not 0 < self.weight_share < 1:
            raise ValueError(f"HashEmbedding.weight_share must be in (0, 1), got {self.weight_share}")
        if not self.init_std > 0:
            raise ValueError(f"HashEmbedding.init_std must be > 0, got {self.init_std}")
        check_budget_fields(
            "HashEmbedding", self.budget, self.budget_ratio, buckets=self.buckets, weight_rows=self.weight_rows
        )

    @property
    def weight_dim(self) -> int:
        """Stored width of the importance table: k rounded up to a multiple of 4."""
        return -(-self.hashes // STORE_DIM_MULTIPLE) * STORE_DIM_MULTIPLE


class HashEmbeddingEmbedding(ProbeEmbedding):
    """Per logical table `t`: a pool `t#pool` of buckets x dim and an importance table
    `t#weights` of weight_rows x ceil4(k); feature C1 reads keys `C1#0`..`C1#{k-1}` (its
    components) and `C1#w` (its importance weights)."""

    def __init__(self, schema: Schema, cfg: HashEmbedding, settings: StoreSettings) -> None:
        super().__init__(schema, settings)
        self.cfg = cfg
        logical = schema.tables()
        pool_rows, weight_rows = self._rows(schema, [m[0].cardinality for m in logical.values()])
        k = cfg.hashes
        tables = []
        for name, b, kr in zip(logical, pool_rows, weight_rows):
            tables.append(TableSpec(f"{name}#pool", b, cfg.dim, init_std=cfg.init_std / math.sqrt(k)))
            tables.append(TableSpec(f"{name}#weights", kr, cfg.weight_dim, init_std=1.0))
        b_of, k_of = dict(zip(logical, pool_rows)), dict(zip(logical, weight_rows))
        probes = []
        for f in schema.sparse:
            t, n = f.table_name, logical[f.table_name][0].cardinality
            salts = [feature_salt(cfg.seed, t, i) for i in range(k + 1)]  # k components, then the weights
            pool = {"rows": b_of[t], "own_rows": own_rows(b_of[t], n)}
            parts = [Probe(f"{f.name}#{i}", f"{t}#pool", {"salt": salts[i], **pool}) for i in range(k)]
            weights = {"rows": k_of[t], "own_rows": own_rows(k_of[t], n)}
            parts.append(Probe(f"{f.name}#w", f"{t}#weights", {"salt": salts[k], **weights}))
            probes.append(parts)
        self._setup(tables, probes)

    def _rows(self, schema: Schema, cards: list[int]) -> tuple[list[int], list[int]]:
        cfg = self.cfg
        floats = budget_floats(cfg.budget, cfg.budget_ratio, schema, cfg.dim)
        if floats is None:
            pool = [min(n, cfg.buckets or DEFAULT_BUCKETS) for n in cards]
            return pool, [min(n, cfg.weight_rows or DEFAULT_WEIGHT_ROWS) for n in cards]
        weight_floats = max(int(floats * cfg.weight_share), len(cards) * cfg.weight_dim)
        weights = fill_rows(cards, weight_floats // cfg.weight_dim)
        pool = None
        if weights is not None:
            pool = fill_rows(cards, (floats - sum(weights) * cfg.weight_dim) // cfg.dim)
        if weights is None or pool is None:
            need = len(cards) * (cfg.dim + cfg.weight_dim) * BYTES_PER_FLOAT
            what = "1 pool row and 1 weight row per table"
            raise too_small("HashEmbedding", cfg.budget, cfg.budget_ratio, need, what)
        return pool, weights

    @property
    def dim(self) -> int:
        return self.cfg.dim

    def combine(self, parts: list[Tensor], feature: int | None) -> Tensor:
        k = self.cfg.hashes
        weights = parts[k]  # [..., ceil4(k)]: the first k are read
        out = parts[0] * weights[..., :1]
        for i in range(1, k):
            out = torch.addcmul(out, parts[i], weights[..., i : i + 1])
        return out
