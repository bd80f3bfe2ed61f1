"""Quotient-remainder compositional embeddings (Shi et al., KDD 2020): id x reads row x // m
of a quotient table and row x % m of a remainder table of m rows, combined by an
element-wise product, a sum or a concatenation. Distinct ids get distinct (q, r) pairs.

Deviations. Initialisation: the authors' QREmbeddingBag calls `uniform_(w, sqrt(1/n))`,
which sets the *lower* bound (U(sqrt(1/n), 1)); it means U(-sqrt(1/n), sqrt(1/n)), whose
products (std 1/(3n)) vanish for large n. Here `mult` draws both tables from U(-b, b) with
b = sqrt(3·init_std), so each factor has std sqrt(init_std) and the product, like a full
table's rows, init_std; `add` starts each table at init_std/sqrt(2), `concat` at init_std.
Bags: each table's rows are pooled, then combined, as QREmbeddingBag does; for `mult`,
mean(q) * mean(r) is not the mean of the products (single ids and sequences are exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.features import Schema
from recemb.storage import StoreSettings, TableSpec
from recemb.storage.layout import BYTES_PER_FLOAT
from recemb.tables.base import Embedded
from recemb.tables.budget import budget_floats, check_budget_fields, fill_rows, too_small
from recemb.tables.hashed import STORE_DIM_MULTIPLE, Probe, ProbeEmbedding

COMBINES = ("mult", "add", "concat")
OOV_POLICIES = ("error", "row")
DEFAULT_COLLISIONS = 4


def qr_rows(n: int, m: int) -> int:
    """Rows of both tables for n ids and a remainder table of m rows."""
    return m + -(-n // m)


def _argmin_collisions(n: int) -> int:
    root = math.isqrt(n)
    return min((m for m in range(max(1, root - 1), root + 3) if m <= n), key=lambda m: (qr_rows(n, m), m))


def fewest_rows(n: int) -> int:
    """The smallest qr_rows(n, m) over m (near m = sqrt(n))."""
    return qr_rows(n, _argmin_collisions(n))


def collisions_for(n: int, rows: int) -> int:
    """The smallest remainder size m whose two tables fit in `rows` (>= fewest_rows(n)) rows:
    the paper's regime of few collisions per quotient row and a large quotient table. Below
    the minimum near sqrt(n), qr_rows falls as m grows, so a binary search finds it."""
    lo, hi = 1, _argmin_collisions(n)
    while lo < hi:
        mid = (lo + hi) // 2
        if qr_rows(n, mid) <= rows:
            hi = mid
        else:
            lo = mid + 1
    return lo


@dataclass(frozen=True)
class QR:
    """Settings for QREmbedding.

    combine: `mult`, `add` (tables `dim` wide) or `concat` (each dim/2 wide). collisions:
    rows m of each remainder table (ids per quotient row), min(m, cardinality), default 4;
    or set per table by budget (bytes) / budget_ratio (of `full`'s bytes). oov: `error`
    refuses ids outside [0, cardinality) (QR is not a hash); `row` gives them one extra id.
    """

    kind: ClassVar[str] = "qr"
    dim: int = 16
    combine: str = "mult"
    collisions: int | None = None
    budget: int = 0
    budget_ratio: float = 0.0
    oov: str = "error"
    init_std: float = 0.01

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"QR.dim must be >= 1, got {self.dim}")
        if self.combine not in COMBINES:
            raise ValueError(f"QR.combine must be one of {COMBINES}, got {self.combine!r}")
        if self.combine == "concat" and self.dim % (2 * STORE_DIM_MULTIPLE):
            raise ValueError(
                f"QR.dim={self.dim} must be a multiple of {2 * STORE_DIM_MULTIPLE} with combine='concat' "
                f"(two tables of dim/2 columns, each a multiple of {STORE_DIM_MULTIPLE} for the TBE store)"
            )
        if self.oov not in OOV_POLICIES:
            raise ValueError(f"QR.oov must be one of {OOV_POLICIES}, got {self.oov!r}")
        if not self.init_std > 0:
            raise ValueError(f"QR.init_std must be > 0, got {self.init_std}")
        check_budget_fields("QR", self.budget, self.budget_ratio, collisions=self.collisions)

    @property
    def table_dim(self) -> int:
        return self.dim // 2 if self.combine == "concat" else self.dim


class QREmbedding(ProbeEmbedding):
    """Per logical table `t`: `t#q` (ceil(n/m) rows) and `t#r` (m rows); keys `C1#q`, `C1#r`."""

    def __init__(self, schema: Schema, cfg: QR, settings: StoreSettings) -> None:
        super().__init__(schema, settings)
        self.cfg = cfg
        logical = schema.tables()
        extra = 1 if cfg.oov == "row" else 0  # the OOV id is `cardinality`
        ids = {name: members[0].cardinality + extra for name, members in logical.items()}
        collisions = self._collisions(schema, list(ids.values()))
        width = cfg.table_dim
        init = {
            "mult": {"init_bound": math.sqrt(3 * cfg.init_std)},
            "add": {"init_std": cfg.init_std / math.sqrt(2)},
            "concat": {"init_std": cfg.init_std},
        }[cfg.combine]
        tables = []
        for (name, n), m in zip(ids.items(), collisions):
            tables += [TableSpec(f"{name}#q", -(-n // m), width, **init), TableSpec(f"{name}#r", m, width, **init)]
        m_of = dict(zip(ids, collisions))
        probes = [
            [
                Probe(f"{f.name}#{part}", f"{t}#{part}", {"m": m_of[t], "n": ids[t]})
                for part in ("q", "r")
            ]
            for f, t in ((f, f.table_name) for f in schema.sparse)
        ]
        self._remainder: tuple[Tensor, Tensor] | None = None  # (ids, their remainders), see store_rows
        self._setup(tables, probes)

    def _collisions(self, schema: Schema, ids: list[int]) -> list[int]:
        cfg = self.cfg
        floats = budget_floats(cfg.budget, cfg.budget_ratio, schema, cfg.dim)
        if floats is None:
            return [min(cfg.collisions or DEFAULT_COLLISIONS, n) for n in ids]
        fewest = [fewest_rows(n) for n in ids]
        rows = fill_rows([n + 1 for n in ids], floats // cfg.table_dim, fewest)  # n + 1: m = 1, n q rows
        if rows is None:
            need = sum(fewest) * cfg.table_dim * BYTES_PER_FLOAT
            raise too_small("QR", cfg.budget, cfg.budget_ratio, need, "about 2·sqrt(cardinality) rows per table")
        return [collisions_for(n, r) for n, r in zip(ids, rows)]

    @property
    def dim(self) -> int:
        return self.cfg.dim

    def embed(self, kjt: KeyedJaggedTensor) -> Embedded:
        if self.cfg.oov == "error":
            self.check_id_range(kjt)
        return super().embed(kjt)

    def store_rows(self, ids: Tensor, args: dict[str, int | Tensor], probe: int) -> Tensor:
        remainder, self._remainder = self._remainder, None
        if probe == 1 and remainder is not None and remainder[0] is ids:  # computed with the quotient
            return remainder[1]
        raw = ids
        if self.cfg.oov == "row":
            n = args["n"]
            ids = torch.where((ids >= 0) & (ids < n), ids, n - 1)  # n - 1 = cardinality: the OOV id
        m = args["m"]
        if ids.device.type == "cpu" and (isinstance(m, int) or m.device.type == "cpu"):
            # numpy's divmod: quotient and remainder in one pass, 3x faster than torch's two here
            q, r = np.divmod(ids.numpy(), m if isinstance(m, int) else m.numpy())
            self._remainder = (raw, torch.from_numpy(r))
            return torch.from_numpy(q if probe == 0 else r)
        return torch.div(ids, m, rounding_mode="floor") if probe == 0 else ids % m  # probe 0: q, 1: r

    def combine(self, parts: list[Tensor], feature: int | None) -> Tensor:
        q, r = parts
        if self.cfg.combine == "concat":
            return torch.cat(parts, dim=-1)
        return q * r if self.cfg.combine == "mult" else q + r
