"""Rows of strings -> CTRData splits, as a schema file says: the part every reader shares.

A reader turns its files into `Source`s: chunks of rows (a frame of strings with the
schema file's column names, "" = missing), each row with its position in the source
(which decides its part: train, validation, test) and its file line (for messages).
`encode` then makes two passes over the sources, like the Criteo reader:

1. fit: over the training rows only, count every categorical, datetime-part and multi-hot
   token (Vocabulary, `min_count`, OOV id 0) and the mean and std of `standardize`d
   numeric columns. A category first seen in validation or test rows maps to OOV, as in
   deployment. Given `vocabularies` (and `dense_stats`) of a saved run skip this pass.
2. encode: every row, in chunks, so only ids (never the raw strings) must fit in memory.

Each value is checked where it is read: a label the rule cannot map, a numeric column that
is not a finite number, a datetime that does not match its format are malformed lines,
raised with file and line or skipped and counted (`BadLines`). The parts keep source order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from recemb.data.batch import CTRData, Jagged
from recemb.data.lines import BadLines, RowChecks
from recemb.data.schema_file import Column, SchemaFile
from recemb.data.vocab import Vocabulary
from recemb.features import FeatureSpec, Schema

log = logging.getLogger(__name__)

PARTS: tuple[str, ...] = ("train", "valid", "test")


@dataclass(frozen=True)
class ReadOptions:
    """How to read a dataset's files (what the dataset is says its schema file)."""

    split: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train, valid, test; see each reader
    on_bad_lines: Literal["error", "skip"] = "error"  # skip: drop malformed lines, count them
    max_rows: int | None = None  # read only the first max_rows data lines (of each file)
    chunksize: int = 100_000  # lines parsed at once: bounds memory for big files
    progress: bool = False  # a tqdm bar per pass

    def __post_init__(self) -> None:
        object.__setattr__(self, "split", tuple(float(f) for f in self.split))
        if len(self.split) != 3 or any(f < 0 for f in self.split) or abs(sum(self.split) - 1) > 1e-6:
            raise ValueError(
                f"ReadOptions.split must be 3 fractions (train, valid, test) >= 0 summing to 1, got {self.split}"
            )
        if self.on_bad_lines not in ("error", "skip"):
            raise ValueError(f"ReadOptions.on_bad_lines must be 'error' or 'skip', got {self.on_bad_lines!r}")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"ReadOptions.max_rows must be >= 1 or None for all rows, got {self.max_rows}")
        if self.chunksize < 1:
            raise ValueError(f"ReadOptions.chunksize must be >= 1, got {self.chunksize}")


@dataclass
class RawChunk:
    """Rows of one source: strings by column name, their positions and file lines."""

    frame: pd.DataFrame  # [n, columns] str, "" = missing
    pos: np.ndarray  # [n] int64, increasing: position in the source, decides the part
    lines: np.ndarray  # [n] int64, 1-based line of each row in the source's file
    consumed: int  # lines read for this chunk, malformed ones included (progress bar)


@dataclass(frozen=True)
class Source:
    """One file's rows: positions [0, bounds[0]) train, [bounds[0], bounds[1]) validation,
    [bounds[1], bounds[2]) test. `chunks(stop, bad_lines)` yields the rows at positions < stop."""

    path: Path
    bounds: tuple[int, int, int]
    chunks: Callable[[int, BadLines], Iterator[RawChunk]]

    @staticmethod
    def split_bounds(n: int, split: Sequence[float]) -> tuple[int, int, int]:
        """The boundaries CTRData.split uses for n rows."""
        return (round(n * split[0]), round(n * (split[0] + split[1])), n)


@dataclass
class LoadedData:
    """The three parts (one schema), what was fitted on train, and the reading report."""

    train: CTRData
    valid: CTRData
    test: CTRData
    vocabularies: dict[str, Vocabulary]
    dense_stats: dict[str, dict[str, float]]  # standardized column -> {"mean", "std"} of train
    report: dict[str, int]  # rows (kept), skipped_lines
    schema_file: SchemaFile = field(repr=False)

    @property
    def schema(self) -> Schema:
        return self.train.schema


@dataclass(frozen=True)
class _Sparse:
    name: str
    column: Column
    part: str | None  # datetime part
    min_count: int

    @property
    def multi(self) -> bool:
        return self.column.type == "multi_hot"


def plan(sf: SchemaFile) -> tuple[list[_Sparse], list[Column]]:
    """Sparse features (column order, datetime parts in place) and numeric columns."""
    sparse: list[_Sparse] = []
    for c in sf.columns:
        min_count = c.min_count or sf.min_count
        if c.type in ("categorical", "multi_hot"):
            sparse.append(_Sparse(c.name, c, None, min_count))
        elif c.type == "datetime":
            sparse.extend(_Sparse(name, c, part, min_count) for name, part in c.parts.items())
    if not sparse:
        raise ValueError(
            f"{sf.where()}: no categorical, multi_hot or datetime column; a schema needs a sparse feature"
        )
    return sparse, [c for c in sf.columns if c.type == "numeric"]


def encode(
    sources: Sequence[Source],
    sf: SchemaFile,
    options: ReadOptions,
    vocabularies: dict[str, Vocabulary] | None = None,
    dense_stats: dict[str, dict[str, float]] | None = None,
    bad_lines: BadLines | None = None,
) -> LoadedData:
    """Fit on the training rows (unless given), then encode every row of every source.
    `bad_lines` may already hold lines a reader skipped before (MovieLens side tables)."""
    sparse, numeric = plan(sf)
    standardized = [c.name for c in numeric if (c.transform or sf.numeric) == "standardize"]
    if vocabularies is not None:
        want = sorted(f.name for f in sparse)
        if sorted(vocabularies) != want:
            raise ValueError(f"vocabularies must be given for exactly {want}, got {sorted(vocabularies)}")
        if standardized and dense_stats is None:
            raise ValueError(
                f"columns {standardized} are standardized with statistics of the training rows: give dense_stats "
                "with the vocabularies (both are saved with a run)"
            )
    if dense_stats is not None and sorted(dense_stats) != sorted(standardized):
        raise ValueError(f"dense_stats must be given for exactly {standardized}, got {sorted(dense_stats)}")
    if vocabularies is None or dense_stats is None:
        fitted_vocab, fitted_stats = _fit(sources, sf, options, sparse, standardized)
        vocabularies = vocabularies if vocabularies is not None else fitted_vocab
        dense_stats = dense_stats if dense_stats is not None else fitted_stats

    bad = bad_lines or BadLines(options.on_bad_lines)
    parts: list[dict[str, list]] = [{"single": [], "dense": [], "labels": [], "bags": []} for _ in PARTS]
    with _progress(options, sources, 2, f"{sf.name}: encode") as bar:
        for src in sources:
            for chunk in src.chunks(src.bounds[2], bad):
                rows = _parse(chunk, sf, sparse, numeric, src.path, bad)
                bar.update(chunk.consumed)
                if rows is None:
                    continue
                part = np.searchsorted(np.asarray(src.bounds[:2]), chunk.pos[rows.keep], side="right")  # [n] 0..2
                single, dense, bags = _ids(rows, sparse, numeric, sf, vocabularies, dense_stats)
                for p in range(len(PARTS)):
                    take = np.flatnonzero(part == p)
                    if take.size:
                        parts[p]["single"].append(single[take])
                        parts[p]["dense"].append(dense[take])
                        parts[p]["labels"].append(rows.labels[take])
                        parts[p]["bags"].append({k: _take_bag(v, take) for k, v in bags.items()})

    schema = Schema(
        tuple(
            FeatureSpec(f.name, vocabularies[f.name].size, "multi_hot" if f.multi else "single",
                        f.column.pooling if f.multi else "sum")
            for f in sparse
        ),
        dense=tuple(c.name for c in numeric),
        label=sf.label.column,
    )  # fmt: skip
    datas = [_assemble(schema, p, sparse, len(numeric)) for p in parts]
    rows_kept = sum(len(d) for d in datas)
    paths = ", ".join(str(s.path) for s in sources)
    if rows_kept == 0:
        raise ValueError(f"{paths}: no rows left ({bad.count} malformed lines skipped)")
    if bad.count:
        log.warning("%s: skipped %d malformed lines", paths, bad.count)
    log.info(
        "read %s: %d rows (train %d, valid %d, test %d), label rate %.4f",
        paths, rows_kept, *(len(d) for d in datas), float(torch.cat([d.labels for d in datas]).mean()),
    )  # fmt: skip
    report = {"rows": rows_kept, "skipped_lines": bad.count}
    return LoadedData(*datas, vocabularies, dense_stats, report, sf)


# -- one chunk -------------------------------------------------------------------------------


@dataclass
class _Rows:
    """The well-formed rows of a chunk: labels, raw dense values, and their tokens."""

    keep: np.ndarray  # [n_chunk] bool
    frame: pd.DataFrame  # [n] the kept rows, index 0..n-1
    labels: np.ndarray  # [n] float32
    dense: np.ndarray  # [n, n_dense] float64, NaN = missing
    times: dict[str, pd.Series]  # datetime column -> parsed [n]

    def tokens(self, f: _Sparse) -> pd.Series:
        """[n] str tokens of a single-valued feature ("" = missing)."""
        c = f.column
        if c.type == "datetime":
            t = self.times[c.name]
            value = getattr(t.dt, f.part)  # type: ignore[arg-type]
            return pd.Series(np.where(t.isna(), "", value.fillna(-1).astype(np.int64).astype(str)), dtype=object)
        s = self.frame[c.name]
        return s.str.slice(0, c.prefix) if c.prefix else s

    def bag(self, f: _Sparse) -> tuple[pd.Series, np.ndarray]:
        """Tokens of a multi-hot feature, flat [nnz], and the bag length of each row [n]."""
        codes, uniques = pd.factorize(self.frame[f.name])  # bags repeat (genres): split each once
        pieces = [[p for p in str(u).split(f.column.separator) if p] for u in uniques]  # "" is no value
        per_unique = np.array([len(p) for p in pieces], dtype=np.int64)
        lengths = per_unique[codes]  # [n]
        starts = np.concatenate([[0], np.cumsum(per_unique)[:-1]]).astype(np.int64)
        nnz = int(lengths.sum())
        within = np.arange(nnz) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # place in its bag
        flat = np.array([p for ps in pieces for p in ps], dtype=object)
        tokens = flat[np.repeat(starts[codes], lengths) + within] if nnz else flat[:0]
        return pd.Series(tokens, index=np.repeat(np.arange(len(codes)), lengths), dtype=object), lengths


def _parse(
    chunk: RawChunk, sf: SchemaFile, sparse: list[_Sparse], numeric: list[Column], path: Path, bad: BadLines
) -> _Rows | None:
    frame = chunk.frame.reset_index(drop=True)
    checks = RowChecks(len(frame))
    rule = sf.label
    raw = frame[rule.column]
    if rule.threshold is not None:
        x = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        checks.fail(
            ~np.isfinite(x),
            lambda i: f"column {rule.column} has {raw.iloc[i]!r}, not a number (the label is {rule.describe()})",
        )
        labels = (x >= rule.threshold).astype(np.float32)
    else:
        mapped = raw.map(rule.values).to_numpy(dtype=np.float64, na_value=np.nan)
        checks.fail(
            np.isnan(mapped),
            lambda i: f"label {raw.iloc[i]!r} in column {rule.column} is not one of {sorted(rule.values)}",
        )
        labels = np.nan_to_num(mapped).astype(np.float32)

    dense = np.empty((len(frame), len(numeric)), dtype=np.float64)  # [n, n_dense]
    for j, c in enumerate(numeric):
        s = frame[c.name]
        x = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        given = (s != "").to_numpy(dtype=bool)
        checks.fail(
            given & ~np.isfinite(x),
            lambda i, c=c, s=s: f"column {c.name} has {s.iloc[i]!r}, not a finite number (or empty for missing)",
        )
        dense[:, j] = np.where(given, x, np.nan)

    times: dict[str, pd.Series] = {}
    for c in {f.column.name: f.column for f in sparse if f.column.type == "datetime"}.values():
        s = frame[c.name]
        t = _parse_times(s, c.format)  # type: ignore[arg-type]
        checks.fail(
            (s != "").to_numpy(dtype=bool) & t.isna().to_numpy(),
            lambda i, c=c, s=s: f"column {c.name} has {s.iloc[i]!r}, not a time in format {c.format!r}",
        )
        times[c.name] = t

    keep = checks.report(bad, path, chunk.lines)
    if not keep.any():
        return None
    if keep.all():
        return _Rows(keep, frame, labels, dense, times)
    idx = np.flatnonzero(keep)
    return _Rows(
        keep,
        frame.iloc[idx].reset_index(drop=True),
        labels[idx],
        dense[idx],
        {k: t.iloc[idx].reset_index(drop=True) for k, t in times.items()},
    )


def _ids(
    rows: _Rows,
    sparse: list[_Sparse],
    numeric: list[Column],
    sf: SchemaFile,
    vocabularies: dict[str, Vocabulary],
    dense_stats: dict[str, dict[str, float]],
) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Single ids [n, F_single], dense [n, n_dense], and per multi-hot feature
    (ids [nnz], owner row [nnz], lengths [n])."""
    singles = [vocabularies[f.name].transform(rows.tokens(f)) for f in sparse if not f.multi]
    single = np.stack(singles, axis=1) if singles else np.zeros((len(rows.labels), 0), dtype=np.int64)
    bags = {}
    for f in sparse:
        if f.multi:
            flat, lengths = rows.bag(f)
            bags[f.name] = (vocabularies[f.name].transform(flat), flat.index.to_numpy(dtype=np.int64), lengths)
    return single, _transform(rows.dense, numeric, sf, dense_stats), bags


def _parse_times(s: pd.Series, fmt: str) -> pd.Series:
    """Times [n] (NaT where missing or malformed). A value must be written exactly in the
    format, zero padding included: strptime alone reads "141021" as %y%m%d%H. Each distinct
    value is parsed once (a chunk of Avazu has one or two hours)."""
    codes, uniques = pd.factorize(s)
    parsed = pd.to_datetime(pd.Series(uniques, dtype=object), format=fmt, errors="coerce")
    exact = parsed.dt.strftime(fmt).to_numpy(dtype=object, na_value=None) == np.asarray(uniques, dtype=object)
    parsed[~exact] = pd.NaT
    return pd.Series(parsed.to_numpy()[codes], index=s.index)


# -- fitting on the training rows -----------------------------------------------------------


class _Counts:
    """token -> count over many chunks; merges pending chunk counts in batches so a big
    vocabulary is not re-added once per chunk."""

    def __init__(self) -> None:
        self.parts: list[pd.Series] = []

    def add(self, values: pd.Series) -> None:
        self.parts.append(values.value_counts(dropna=False))
        if len(self.parts) >= 16:
            self.parts = [self.total()]

    def total(self) -> pd.Series:
        if not self.parts:
            return pd.Series([], dtype=np.int64)
        if len(self.parts) == 1:
            return self.parts[0]
        return pd.concat(self.parts).groupby(level=0, dropna=False, sort=False).sum()


def _fit(
    sources: Sequence[Source], sf: SchemaFile, options: ReadOptions, sparse: list[_Sparse], standardized: list[str]
) -> tuple[dict[str, Vocabulary], dict[str, dict[str, float]]]:
    counts = {f.name: _Counts() for f in sparse}
    numeric = [c for c in sf.columns if c.type == "numeric"]
    moments = np.zeros((3, len(numeric)))  # n, sum, sum of squares of the given values
    quiet = BadLines(options.on_bad_lines, quiet=True)  # counted in the encode pass
    with _progress(options, sources, 0, f"{sf.name}: fit") as bar:
        for src in sources:
            if src.bounds[0] == 0:
                continue
            for chunk in src.chunks(src.bounds[0], quiet):
                rows = _parse(chunk, sf, sparse, numeric, src.path, quiet)
                bar.update(chunk.consumed)
                if rows is None:
                    continue
                for f in sparse:
                    counts[f.name].add(rows.bag(f)[0] if f.multi else rows.tokens(f))
                x = rows.dense
                given = ~np.isnan(x)
                moments += [given.sum(0), np.where(given, x, 0).sum(0), np.where(given, x * x, 0).sum(0)]
    vocabularies = {f.name: Vocabulary.from_counts(counts[f.name].total(), f.min_count) for f in sparse}
    stats = {}
    for j, c in enumerate(numeric):
        if c.name in standardized:
            n = max(moments[0, j], 1.0)
            mean = moments[1, j] / n
            std = float(np.sqrt(max(moments[2, j] / n - mean * mean, 0.0)))
            stats[c.name] = {"mean": float(mean), "std": std if std > 1e-12 else 1.0}
    return vocabularies, stats


def _transform(x: np.ndarray, numeric: list[Column], sf: SchemaFile, stats: dict[str, dict[str, float]]) -> np.ndarray:
    """Dense features [n, n_dense] float32; missing -> 0 after the transform."""
    out = np.zeros(x.shape, dtype=np.float32)
    for j, c in enumerate(numeric):
        how = c.transform or sf.numeric
        col = x[:, j]
        if how == "log1p":
            col = np.log1p(np.maximum(col, 0.0))  # counts are heavy-tailed, a few negative (DLRM)
        elif how == "standardize":
            col = (col - stats[c.name]["mean"]) / stats[c.name]["std"]
        out[:, j] = np.nan_to_num(col, nan=0.0)
    return out


# -- assembling the parts --------------------------------------------------------------------


def _take_bag(bag: tuple[np.ndarray, np.ndarray, np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, lengths) of the bags of `rows` (increasing), in row order."""
    ids, owner, lengths = bag
    return ids[np.isin(owner, rows)], lengths[rows]


def _assemble(schema: Schema, part: dict[str, list], sparse: list[_Sparse], n_dense: int) -> CTRData:
    n_single = sum(not f.multi for f in sparse)
    labels = np.concatenate(part["labels"]) if part["labels"] else np.zeros(0, dtype=np.float32)
    single = np.concatenate(part["single"]) if part["single"] else np.zeros((0, n_single), dtype=np.int64)
    dense = np.concatenate(part["dense"]) if part["dense"] else np.zeros((0, n_dense), dtype=np.float32)
    jagged = {}
    for f in sparse:
        if not f.multi:
            continue
        values = [b[f.name][0] for b in part["bags"]]
        lengths = [b[f.name][1] for b in part["bags"]]
        ids = np.concatenate(values) if values else np.zeros(0, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths) if lengths else [])]).astype(np.int64)
        jagged[f.name] = Jagged(torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(offsets))
    return CTRData(
        schema, torch.from_numpy(single.astype(np.int64)), jagged, torch.from_numpy(dense), torch.from_numpy(labels)
    )


def _progress(options: ReadOptions, sources: Sequence[Source], bound: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=sum(s.bounds[bound] for s in sources), desc=desc, unit="rows", disable=not options.progress)
