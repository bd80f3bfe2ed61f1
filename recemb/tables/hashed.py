"""The hashing trick (Weinberger et al., ICML 2009): each table hashes raw ids into its rows.

Also home of `ProbeEmbedding`, the machinery every hashing kind shares: a feature reads a
few store keys ("probes", `C1#0`, `C1#1`, ...), the ids of all probes of all features go
through one store call, and a kind's `combine` turns a feature's probe vectors into its
vector. Deviations: a table gets min(cardinality, buckets) rows (never more rows than ids),
and a table that holds every id of its features (cardinality <= buckets) needs no hash: ids
in [0, cardinality) read their own row, as in `full`, and only ids outside that range are
hashed (hashing 12 ids into 12 rows would make about 4 of them collide). There is no sign
hash (the paper's ξ(x)); CTR models learn the sign with the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.features import Schema
from recemb.hashing import Runs, feature_salt, hash_to_buckets
from recemb.storage import LookupSpec, StoreLayout, StoreSettings, TableSpec
from recemb.storage.base import length_per_key
from recemb.storage.layout import BYTES_PER_FLOAT
from recemb.tables.base import Embedded, TableEmbedding
from recemb.tables.budget import budget_floats, check_budget_fields, fill_rows, too_small

DEFAULT_BUCKETS = 2**18
STORE_DIM_MULTIPLE = 4  # the TBE store's table widths are multiples of 4 (storage/tbe.py)


@dataclass(frozen=True)
class Probe:
    """One store lookup of a feature: its key, the table it reads, and the integers the
    kind's id transform needs for it (a salt, a number of rows, ...)."""

    key: str
    table: str
    args: dict[str, int] = field(default_factory=dict)


class ProbeEmbedding(TableEmbedding):
    """Base of the hashing kinds. A subclass calls `_setup(tables, probes)` with the probes of
    each feature (schema order) and implements `store_rows` (raw ids -> rows of one probe)
    and `combine` (a feature's probe vectors -> its vector).

    Store keys go round by round: probe 0 of every feature, then probe 1, ... So when every
    feature has the same probes (the usual case), round p reads all the input's ids (no
    gather: the store's ids are the input's, once per round), a round's keys are one width
    (the TBE store's merged tables stay contiguous), and without sequences the store output
    is one [B, F, w] view per round, combined for all features in one call.

    An integer arg that differs between a round's features reaches `store_rows` as a tensor
    of one value per id, or, for the args named in `hash_args` (those `store_rows` passes on
    to `hash_to_buckets`, or reads per feature), as `Runs`: one value per feature, which the
    hash kernel reads without an [N] array.
    """

    hash_args: ClassVar[tuple[str, ...]] = ("salt", "rows", "own_rows")

    def _setup(self, tables: list[TableSpec], probes: list[list[Probe]]) -> None:
        self._tables = tuple(tables)
        self._probes = probes
        self._n_rounds = max(len(ps) for ps in probes)
        self._same_probes = all(len(ps) == self._n_rounds for ps in probes)
        self._key_order = [(f, p) for p in range(self._n_rounds) for f, ps in enumerate(probes) if p < len(ps)]
        # per round, each integer arg: an int when the round's features share it (bucketize's
        # fast paths), else a buffer of one value per feature of the round
        self._round_args: list[dict[str, int | str]] = []
        for p in range(self._n_rounds):
            members = [ps[p] for ps in probes if p < len(ps)]
            args: dict[str, int | str] = {}
            for name in members[0].args:
                values = [m.args[name] for m in members]
                if len(set(values)) == 1:
                    args[name] = values[0]
                else:
                    args[name] = f"_round{p}_{name}"
                    self.register_buffer(args[name], torch.tensor(values), persistent=False)
            self._round_args.append(args)
        self._arg_max = {name: max(p.args[name] for ps in probes for p in ps) for name in probes[0][0].args}
        self._cache: tuple[tuple, list[dict[str, object]]] | None = None
        self._build_store()
        dims = {t.name: t.dim for t in tables}
        widths = {tuple(dims[p.table] for p in ps) for ps in probes}
        self._fast = not self.schema.sequences and self._same_probes and len(widths) == 1
        self._round_widths = list(widths.pop()) if self._fast else []
        self._key_columns = [s.stop - s.start for s in self.store.layout.column_slices().values()]
        self._store_keys = list(self.store.layout.keys)

    def layout(self) -> StoreLayout:
        lookups = []
        for f, p in self._key_order:
            spec, probe = self.schema.sparse[f], self._probes[f][p]
            pooling = "none" if spec.is_sequence else spec.pooling
            lookups.append(LookupSpec(probe.key, probe.table, pooling, spec.max_len))
        return StoreLayout(self._tables, tuple(lookups))

    # -- what each kind implements --------------------------------------------------------
    def store_rows(self, ids: Tensor, args: dict[str, int | Tensor | Runs], probe: int) -> Tensor:
        """Rows [N] of probe `probe` for raw ids [N] int64 (probes come in order 0, 1, ...);
        `args[name]` is an int, or where the features' values differ a tensor [N] (Runs for
        the names in `hash_args`). By default a probe's args are its `salt`, its table's
        `rows` and `own_rows` (see `own_rows`): the ids hashed into the table."""
        return hash_to_buckets(ids, args["salt"], args["rows"], self._arg_max["rows"], args["own_rows"])

    def combine(self, parts: list[Tensor], feature: int | None) -> Tensor:
        """A feature's probe vectors, parts[p] [..., w_p], -> its vector [..., D]. `feature`
        is None when each part is [B, F, w_p], every feature at once (same probes)."""
        return parts[0]

    # -- id transform -----------------------------------------------------------------------
    def store_input(self, kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """The store's KJT: each feature's ids once per probe, mapped to the probe's rows."""
        per_feature = length_per_key(kjt)
        rounds = self._plan(per_feature, kjt.values().device)
        values = kjt.values().long()
        rows = [
            self.store_rows(values if r["index"] is None else values[r["index"]], r["args"], p)  # type: ignore[index]
            for p, r in enumerate(rounds)
        ]
        # offsets passed on where the input has them, or the store would recompute them
        lengths, offsets = kjt.lengths(), kjt.offsets_or_none()
        if self._n_rounds > 1:
            if self._same_probes:
                lengths = lengths.repeat(self._n_rounds)
                if offsets is not None:  # round p's ids come after p rounds of all the ids
                    later = (offsets[1:] + p * values.numel() for p in range(1, self._n_rounds))
                    offsets = torch.cat([offsets, *later])
            else:
                features = torch.tensor([f for f, _ in self._key_order], device=lengths.device)
                lengths = lengths.view(len(self._probes), -1)[features].reshape(-1)
                offsets = None
        return KeyedJaggedTensor(
            keys=self._store_keys,
            values=rows[0] if len(rows) == 1 else torch.cat(rows),
            lengths=lengths,
            offsets=offsets,
            stride=kjt.stride(),
            length_per_key=per_feature * self._n_rounds
            if self._same_probes
            else [per_feature[f] for f, _ in self._key_order],
        )

    def _plan(self, length_per_key: list[int], device: torch.device) -> list[dict[str, object]]:
        """Per round: which input ids it reads (None: all) and its args per id. It depends only
        on how many ids each feature has, so a run of same-shaped batches builds it once."""
        signature = (tuple(length_per_key), device)
        if self._cache is not None and self._cache[0] == signature:
            return self._cache[1]
        per_feature = torch.tensor(length_per_key, device=device)
        starts = torch.cumsum(per_feature, 0) - per_feature
        rounds = []
        for p, round_args in enumerate(self._round_args):
            features = torch.tensor([f for f, q in self._key_order if q == p], device=device)
            counts = per_feature[features]
            total = int(counts.sum())
            index = None
            if not self._same_probes:  # this round's features' ids, end to end
                first = torch.cumsum(counts, 0) - counts
                key = torch.repeat_interleave(torch.arange(len(counts), device=device), counts, output_size=total)
                index = (starts[features] - first)[key] + torch.arange(total, device=device)
            args: dict[str, int | Tensor | Runs] = {}
            for name, arg in round_args.items():  # an int, or a buffer's name: spread to the ids
                if isinstance(arg, int):
                    args[name] = arg
                elif name in self.hash_args:
                    args[name] = Runs(getattr(self, arg), counts)
                else:
                    args[name] = torch.repeat_interleave(getattr(self, arg), counts)
            rounds.append({"index": index, "args": args})
        self._cache = (signature, rounds)
        return rounds

    # -- combine ------------------------------------------------------------------------------
    def embed(self, kjt: KeyedJaggedTensor) -> Embedded:
        out = self.store(self.store_input(kjt), check_ids=False)  # rows in range by construction
        return self.combine_output(out, kjt)

    def combine_output(self, out: Tensor, kjt: KeyedJaggedTensor) -> Embedded:
        # torch.split, not slices: its backward is one cat, where each slice's would fill a
        # zero gradient as large as `out`
        batch, n = kjt.stride(), len(self._probes)
        if self._fast and len(self._round_widths) == 1:  # one round: a view, no split to copy back
            return Embedded(self.combine([out.view(batch, n, self._round_widths[0])], None))
        if self._fast:  # round p is F keys of w_p columns each: a [B, F, w_p] view
            rounds = out.split([n * w for w in self._round_widths], dim=1)
            return Embedded(self.combine([r.view(batch, n, w) for r, w in zip(rounds, self._round_widths)], None))
        by_key = {}  # pooled [B, w], sequence [B, L, w]
        for lookup, part in zip(self.store.layout.lookups, out.split(self._key_columns, dim=1)):
            by_key[lookup.key] = part.view(batch, lookup.max_len, -1) if lookup.pooling == "none" else part
        lengths = kjt.lengths().view(n, batch)
        pooled, sequences = [], {}
        for i, (spec, probes) in enumerate(zip(self.schema.sparse, self._probes)):
            vector = self.combine([by_key[p.key] for p in probes], i)
            if spec.is_sequence:
                mask = torch.arange(spec.max_len, device=out.device).unsqueeze(0) < lengths[i].unsqueeze(1)  # [B, L]
                sequences[spec.name] = (vector, mask)
            else:
                pooled.append(vector)
        stacked = torch.stack(pooled, dim=1) if pooled else out.new_zeros(batch, 0, self.dim)
        return Embedded(stacked, sequences)


@dataclass(frozen=True)
class Hashed:
    """Settings for HashedEmbedding.

    buckets: rows of each table, min(cardinality, buckets); default 2**18 unless a budget
    sets them; a table with a row per id maps in-range ids to their own rows, unhashed.
    budget (bytes) or budget_ratio (of `full`'s bytes): rows sized to fit, small tables
    first kept whole, large ones capped alike. seed: salts of the hashes.
    """

    kind: ClassVar[str] = "hashed"
    dim: int = 16
    buckets: int | None = None
    budget: int = 0
    budget_ratio: float = 0.0
    seed: int = 0
    init_std: float = 0.01

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"Hashed.dim must be >= 1, got {self.dim}")
        if not self.init_std > 0:
            raise ValueError(f"Hashed.init_std must be > 0, got {self.init_std}")
        check_budget_fields("Hashed", self.budget, self.budget_ratio, buckets=self.buckets)


class HashedEmbedding(ProbeEmbedding):
    """One hashed table per logical table, read once per feature (key `C1#0`). Features sharing
    a table share its salt, so a target item and a history of items read the same rows."""

    def __init__(self, schema: Schema, cfg: Hashed, settings: StoreSettings) -> None:
        super().__init__(schema, settings)
        self.cfg = cfg
        tables = schema.tables()
        rows = sized_rows("Hashed", cfg, schema, [m[0].cardinality for m in tables.values()], cfg.dim, cfg.buckets)
        specs = [TableSpec(name, r, cfg.dim, init_std=cfg.init_std) for name, r in zip(tables, rows)]
        rows_of = dict(zip(tables, rows))
        own = {t: own_rows(r, members[0].cardinality) for (t, members), r in zip(tables.items(), rows)}
        probes = [
            [Probe(f"{f.name}#0", t, {"salt": feature_salt(cfg.seed, t), "rows": rows_of[t], "own_rows": own[t]})]
            for f, t in ((f, f.table_name) for f in schema.sparse)
        ]
        self._setup(specs, probes)

    @property
    def dim(self) -> int:
        return self.cfg.dim


def own_rows(rows: int, cardinality: int) -> int:
    """`hash_to_buckets`' own_rows for a table of `rows` rows read by ids below `cardinality`:
    every id reads its own row when the table has one per id, else none does (0)."""
    return rows if rows == cardinality else 0


def sized_rows(
    owner: str, cfg: Any, schema: Schema, demands: list[int], floats_per_row: int, cap: int | None
) -> list[int]:
    """Rows per table: min(demand, cap or DEFAULT_BUCKETS), or water-filled into the
    config's budget when it has one (each row costing `floats_per_row` parameters)."""
    floats = budget_floats(cfg.budget, cfg.budget_ratio, schema, cfg.dim)
    if floats is None:
        return [min(d, cap or DEFAULT_BUCKETS) for d in demands]
    rows = fill_rows(demands, floats // floats_per_row)
    if rows is None:
        need = len(demands) * floats_per_row * BYTES_PER_FLOAT
        raise too_small(owner, cfg.budget, cfg.budget_ratio, need, f"1 row of {floats_per_row} floats per table")
    return rows
