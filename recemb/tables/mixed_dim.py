"""Mixed-dimension embeddings (Ginart et al., "Mixed Dimension Embeddings with Application to
Memory-Efficient Recommendation Systems", 2019): each table gets its own width
d_t = λ·n_t^(−α), and a learned linear map takes it to the model's width.

Deviations: widths are per logical table (the paper's per-feature blocking; its
per-frequency-bucket blocking of one table is what the `dnis` kind's groups do here), rounded
to multiples of 4 (the TBE store's and fbgemm's int8 inference widths) and clamped to
[4, dim]; a table whose width is `dim` gets no projection. Without a budget λ gives the
smallest table the full `dim` (the reference code's d0 rule); with one, λ is the largest that
fits the tables and projections in it. `rows` may hash a large table into fewer rows (what
`recemb plan` proposes for large vocabularies); n_t is then the table's rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.features import Schema
from recemb.hashing import feature_salt, hash_to_buckets
from recemb.storage import LookupSpec, StoreLayout, StoreSettings, TableSpec
from recemb.storage.layout import BYTES_PER_FLOAT
from recemb.tables.base import Embedded, TableEmbedding
from recemb.tables.budget import budget_floats, check_budget_fields, too_small

WIDTH_MULTIPLE = 4  # TBE store widths, and fbgemm's int-n-bit inference rows


def parse_entries(owner: str, field: str, entries: tuple[str, ...] | str) -> dict[str, int]:
    """("C1=8", "C7=4") or "C1=8;C7=4" -> {"C1": 8, "C7": 4}."""
    if isinstance(entries, str):
        entries = tuple(e for e in entries.split(";") if e.strip())
    out = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep or not name.strip() or not value.strip().isdigit():
            raise ValueError(f"{owner}.{field} entries must look like 'feature=integer', got {entry!r}")
        out[name.strip()] = int(value)
    return out


def check_width(owner: str, what: str, width: int, dim: int) -> None:
    """A table width must be a multiple of 4 in [4, dim]."""
    if width < WIDTH_MULTIPLE or width % WIDTH_MULTIPLE or width > dim:
        raise ValueError(
            f"{owner}: {what}={width} must be a multiple of {WIDTH_MULTIPLE} in [{WIDTH_MULTIPLE}, dim={dim}] "
            f"(the TBE store and fbgemm's int8 export read widths in multiples of {WIDTH_MULTIPLE})"
        )


def check_dim(owner: str, dim: int) -> None:
    if dim < WIDTH_MULTIPLE or dim % WIDTH_MULTIPLE:
        raise ValueError(
            f"{owner}.dim must be a multiple of {WIDTH_MULTIPLE} and >= {WIDTH_MULTIPLE} (widths are multiples "
            f"of {WIDTH_MULTIPLE} up to dim), got {dim}"
        )


def table_of(schema: Schema, owner: str, field: str, names: dict[str, int]) -> dict[str, int]:
    """Entries keyed by feature or table name -> keyed by logical table (the most any reader gets)."""
    tables = schema.tables()
    out: dict[str, int] = {}
    for name, value in names.items():
        if name in tables:
            table = name
        elif name in schema.names:
            table = schema.feature(name).table_name
        else:
            raise ValueError(f"{owner}.{field} names unknown feature {name!r}; the schema has {list(schema.names)}")
        out[table] = max(value, out.get(table, 0))
    return out


def width_order(schema: Schema, widths: dict[str, int]) -> list[int]:
    """Schema features ordered by their table's width, ascending (stable): the store's lookup
    order. Not needed for correctness: TBEStore puts any layout's lookups in this order for
    fbgemm itself (see TBEStore._grouped_by_merged_table). Given it here, the store has
    nothing to reorder; the kind permutes its keys and outputs instead."""
    return sorted(range(len(schema.sparse)), key=lambda i: widths[schema.sparse[i].table_name])


def store_lookups(schema: Schema, order: list[int]) -> tuple[LookupSpec, ...]:
    """One lookup per feature (its own key, its table), in `order`."""
    features = [schema.sparse[i] for i in order]
    return tuple(LookupSpec(f.name, f.table_name, "none" if f.is_sequence else f.pooling, f.max_len) for f in features)


def round_width(x: float, dim: int) -> int:
    """Nearest multiple of 4 in [4, dim]."""
    return int(min(dim, max(WIDTH_MULTIPLE, WIDTH_MULTIPLE * round(x / WIDTH_MULTIPLE))))


def power_rule_widths(
    sizes: dict[str, float], dim: int, alpha: float, floats: int | None, fixed: dict[str, int], rows: dict[str, int]
) -> dict[str, int] | None:
    """Widths d_t = round4(λ·n_t^(−α)) in [4, dim] for the tables not in `fixed`; λ gives the
    smallest table `dim` when `floats` is None, else the largest λ whose tables (rows × width)
    and projections (width × dim, for widths below dim) fit in `floats`. None when even
    width 4 everywhere does not fit."""

    def widths(lam: float) -> dict[str, int]:
        out = {t: round_width(lam * n ** (-alpha), dim) for t, n in sizes.items() if t not in fixed}
        return {**out, **fixed}

    def cost(w: dict[str, int]) -> int:
        return sum(rows[t] * d + (d * dim if d != dim else 0) for t, d in w.items())

    free = [n for t, n in sizes.items() if t not in fixed]
    if floats is None:
        return widths(dim * min(free) ** alpha if free else 0.0)
    if cost(widths(0.0)) > floats:
        return None
    lo, hi = 0.0, dim * max(free, default=1.0) ** alpha * 2  # widths(hi) is dim everywhere
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(widths(mid)) <= floats else (lo, mid)
    return widths(lo)


@dataclass(frozen=True)
class MixedDim:
    """Settings for MixedDimEmbedding.

    alpha: the power rule's temperature (0: every table `dim` wide). budget (bytes) or
    budget_ratio (of `full`'s bytes at this dim): λ fitted to it, projections included.
    widths: fixed widths, "C1=8;C2=4" (features or table names). rows: hash a table into
    fewer rows than its cardinality, "C3=4096" (salted with `seed`).
    """

    kind: ClassVar[str] = "mixed_dim"
    dim: int = 16
    alpha: float = 0.3
    budget: int = 0
    budget_ratio: float = 0.0
    widths: tuple[str, ...] = ()
    rows: tuple[str, ...] = ()
    seed: int = 0
    init_std: float = 0.01

    def __post_init__(self) -> None:
        for name in ("widths", "rows"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, tuple(e.strip() for e in value.split(";") if e.strip()))
        check_dim("MixedDim", self.dim)
        if self.alpha < 0:
            raise ValueError(f"MixedDim.alpha must be >= 0, got {self.alpha}")
        if not self.init_std > 0:
            raise ValueError(f"MixedDim.init_std must be > 0, got {self.init_std}")
        check_budget_fields("MixedDim", self.budget, self.budget_ratio)
        for name, width in parse_entries("MixedDim", "widths", self.widths).items():
            check_width("MixedDim", f"widths entry {name}", width, self.dim)
        for name, rows in parse_entries("MixedDim", "rows", self.rows).items():
            if rows < 1:
                raise ValueError(f"MixedDim.rows entry {name}={rows} must be >= 1")


class MixedDimEmbedding(TableEmbedding):
    """One table per logical table, `widths[t]` wide; features read their table and are
    projected to `dim` (no bias, so padding and empty bags stay zero)."""

    def __init__(self, schema: Schema, cfg: MixedDim, settings: StoreSettings) -> None:
        super().__init__(schema, settings)
        self.cfg = cfg
        tables = schema.tables()
        asked = table_of(schema, "MixedDim", "rows", parse_entries("MixedDim", "rows", cfg.rows))
        self.rows = {t: min(m[0].cardinality, asked.get(t, m[0].cardinality)) for t, m in tables.items()}
        self.hashed = [t for t in tables if self.rows[t] < tables[t][0].cardinality]
        fixed = table_of(schema, "MixedDim", "widths", parse_entries("MixedDim", "widths", cfg.widths))
        floats = budget_floats(cfg.budget, cfg.budget_ratio, schema, cfg.dim)
        sizes = {t: float(r) for t, r in self.rows.items()}
        widths = power_rule_widths(sizes, cfg.dim, cfg.alpha, floats, fixed, self.rows)
        if widths is None or (floats is not None and self.table_floats(widths) > floats):
            least = {t: fixed.get(t, WIDTH_MULTIPLE) for t in tables}
            need = self.table_floats(least) * BYTES_PER_FLOAT
            what = "every table 4 wide (or its fixed width) with its projection"
            raise too_small("MixedDim", cfg.budget, cfg.budget_ratio, need, what)
        self.widths = widths
        projected = [t for t in tables if widths[t] != cfg.dim]
        # a list, not a ModuleDict: table names may hold "." (see unified.py)
        self.projections = nn.ModuleList(nn.Linear(widths[t], cfg.dim, bias=False) for t in projected)
        self._projection_of = {t: i for i, t in enumerate(projected)}
        self._table_of_feature = [f.table_name for f in schema.sparse]
        self._hash_features = [i for i, f in enumerate(schema.sparse) if f.table_name in self.hashed]
        salts = [feature_salt(cfg.seed, f.table_name) for f in schema.sparse]
        self.register_buffer("_salts", torch.tensor(salts), persistent=False)
        self.register_buffer("_rows", torch.tensor([self.rows[f.table_name] for f in schema.sparse]), persistent=False)
        self._order = width_order(schema, widths)
        self._permute = self._order if self._order != sorted(self._order) else None
        self._build_store()

    def table_floats(self, widths: dict[str, int]) -> int:
        """Parameters of the tables at `widths` and of their projections."""
        return sum(self.rows[t] * d + (d * self.cfg.dim if d != self.cfg.dim else 0) for t, d in widths.items())

    @property
    def dim(self) -> int:
        return self.cfg.dim

    def layout(self) -> StoreLayout:
        tables = tuple(TableSpec(t, self.rows[t], self.widths[t], init_std=self.cfg.init_std) for t in self.rows)
        return StoreLayout(tables, store_lookups(self.schema, self._order))

    def projection(self, table: str) -> nn.Linear | None:
        return self.projections[self._projection_of[table]] if table in self._projection_of else None

    # -- id transform ---------------------------------------------------------------------
    def store_input(self, kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        if not self.hashed:
            self.check_id_range(kjt)
            return kjt if self._permute is None else kjt.permute(self._permute)
        values, start = kjt.values(), 0
        per_key = kjt.length_per_key()
        for i, (spec, n) in enumerate(zip(self.schema.sparse, per_key)):  # unhashed ids must be in range
            if n and i not in self._hash_features:
                lo, hi = (int(v) for v in torch.aminmax(values[start : start + n]))
                if lo < 0 or hi >= spec.cardinality:
                    raise IndexError(
                        f"feature {spec.name!r}: id {lo if lo < 0 else hi} is outside [0, {spec.cardinality}) "
                        f"(its cardinality); hash it with MixedDim.rows or map unseen ids to an OOV id"
                    )
            start += n
        counts = torch.tensor(per_key, device=values.device)
        salt = torch.repeat_interleave(self._salts, counts, output_size=values.numel())
        rows = torch.repeat_interleave(self._rows, counts, output_size=values.numel())
        hashed = torch.zeros(len(self.schema.sparse), dtype=torch.bool, device=values.device)
        hashed[self._hash_features] = True
        hashed = torch.repeat_interleave(hashed, counts, output_size=values.numel())
        values = values.long()
        rows_of = torch.where(hashed, hash_to_buckets(values, salt, rows, max(self.rows.values())), values)
        out = KeyedJaggedTensor(
            keys=kjt.keys(), values=rows_of, lengths=kjt.lengths(), offsets=kjt.offsets(), stride=kjt.stride()
        )
        return out if self._permute is None else out.permute(self._permute)

    # -- combine ----------------------------------------------------------------------------
    def combine_output(self, out: Tensor, kjt: KeyedJaggedTensor) -> Embedded:
        batch = kjt.stride()
        slices = self.store.layout.column_slices()
        parts = dict(zip(slices, out.split([s.stop - s.start for s in slices.values()], dim=1)))
        lengths = kjt.lengths().view(len(self._keys), batch)
        pooled, sequences = [], {}
        for i, spec in enumerate(self.schema.sparse):
            part = parts[spec.name]
            projection = self.projection(spec.table_name)
            if spec.is_sequence:
                part = part.view(batch, spec.max_len, -1)
            vector = part if projection is None else projection(part)
            if spec.is_sequence:
                mask = torch.arange(spec.max_len, device=out.device).unsqueeze(0) < lengths[i].unsqueeze(1)
                sequences[spec.name] = (vector, mask)
            else:
                pooled.append(vector)
        stacked = torch.stack(pooled, dim=1) if pooled else out.new_zeros(batch, 0, self.dim)
        return Embedded(stacked, sequences)

    # -- export ---------------------------------------------------------------------------------
    def export_tables(self) -> dict[str, list[dict]]:
        """Compact blocks for recemb.export: one per table, with its projection."""
        weights = self.store.table_weights()
        out = {}
        for t, w in weights.items():
            projection = self.projection(t)
            block = {"lo": 0, "hi": self.schema.tables()[t][0].cardinality, "weight": w}
            if projection is not None:  # else dim wide already
                block["projection"] = projection.weight.detach().clone()  # [D, w]
            if t in self.hashed:
                block["salt"] = feature_salt(self.cfg.seed, t)
            out[t] = [block]
        return out
