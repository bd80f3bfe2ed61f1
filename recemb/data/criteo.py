"""Reader of the Criteo Display Advertising Challenge data (Kaggle 2014) into CTRData splits.

Formats, told apart by the first line: Kaggle's `train.txt` (no header, 40 TAB-separated
fields: label, I1..I13, C1..C26) and the CSV sample with a header `label,I1,...,C26` whose
integers are written as floats (`260.0`). An empty field is a missing value.

Rows are split in file order (the Kaggle file is chronological): by default the first 70%
train, the next 10% validation, the last 20% test, with the boundaries of `CTRData.split`.
Vocabularies are fitted on the training rows only, so a category first seen in validation
or test maps to the OOV id 0, as it would in deployment. `min_count` defaults to 2: on
samples of thousands of rows most categories are seen once, and a row of its own for each
is noise to fit (on the full 45M rows, 10 or more is usual). Missing categories also map to 0.

Numeric columns, `numeric=`:
- "log": dense features log(1 + max(x, 0)) (DLRM's transform: counts are heavy-tailed and
  a few are negative); missing -> 0, the same as x = 0.
- "bucket": each I column becomes a categorical feature (the Kaggle winners' encoding,
  ycjuan/kaggle-2014-criteo): token floor(ln(x)²) (>= 1) for x > 2, floor(x) - 3 (<= -1)
  for x <= 2 so small values keep their own tokens, and 0 for missing, its own bucket.
  The tokens go through a Vocabulary like the C columns. The schema then has no dense part.

The file is read twice in chunks (fit the vocabularies on the training rows, then encode
all rows), so only the encoded ids, never the raw strings, have to fit in memory.
Every line is checked: a wrong number of fields, a label other than 0/1, or a value in
an I column that is not a finite number raises ValueError naming the file and the line
(1-based, the header counted), never a silently shifted row.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from recemb.data.batch import CTRData
from recemb.data.vocab import Vocabulary
from recemb.features import FeatureSpec, Schema

log = logging.getLogger(__name__)

LABEL = "label"
NUMERIC: tuple[str, ...] = tuple(f"I{i}" for i in range(1, 14))
CATEGORICAL: tuple[str, ...] = tuple(f"C{i}" for i in range(1, 27))
COLUMNS: tuple[str, ...] = (LABEL, *NUMERIC, *CATEGORICAL)
_LABELS = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0}


@dataclass(frozen=True)
class CriteoConfig:
    """How to read a Criteo file; saved with a run beside the vocabularies."""

    split: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train, valid, test in file order
    min_count: int = 2  # a category seen fewer times in train maps to OOV
    numeric: Literal["log", "bucket"] = "log"
    max_rows: int | None = None  # read only the first max_rows data rows
    chunksize: int = 100_000  # lines parsed at once: bounds memory for big files

    def __post_init__(self) -> None:
        object.__setattr__(self, "split", tuple(float(f) for f in self.split))
        if len(self.split) != 3 or any(f < 0 for f in self.split) or abs(sum(self.split) - 1) > 1e-6:
            raise ValueError(
                f"CriteoConfig.split must be 3 fractions (train, valid, test) >= 0 summing to 1, got {self.split}"
            )
        if self.min_count < 1:
            raise ValueError(f"CriteoConfig.min_count must be >= 1, got {self.min_count}")
        if self.numeric not in ("log", "bucket"):
            raise ValueError(f"CriteoConfig.numeric must be 'log' or 'bucket', got {self.numeric!r}")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"CriteoConfig.max_rows must be >= 1 or None for all rows, got {self.max_rows}")
        if self.chunksize < 1:
            raise ValueError(f"CriteoConfig.chunksize must be >= 1, got {self.chunksize}")


@dataclass
class CriteoData:
    """The three splits (one schema) and the vocabularies fitted on train, to save with a run."""

    train: CTRData
    valid: CTRData
    test: CTRData
    vocabularies: dict[str, Vocabulary]
    config: CriteoConfig

    @property
    def schema(self) -> Schema:
        return self.train.schema


def load_criteo(
    path: str | Path,
    split: Sequence[float] = (0.7, 0.1, 0.2),
    min_count: int = 2,
    numeric: Literal["log", "bucket"] = "log",
    max_rows: int | None = None,
    chunksize: int = 100_000,
    vocabularies: dict[str, Vocabulary] | None = None,
) -> CriteoData:
    """Read, check and encode a Criteo file; `vocabularies` (e.g. from a saved run) are used
    as they are instead of being fitted on the training rows."""
    cfg = CriteoConfig(tuple(split), min_count, numeric, max_rows, chunksize)  # type: ignore[arg-type]
    path = Path(path)
    fmt = _sniff(path)
    n = _count_rows(path, fmt)
    if cfg.max_rows is not None:
        n = min(n, cfg.max_rows)
    n_train = round(n * cfg.split[0])  # the boundary CTRData.split uses
    sparse_cols = CATEGORICAL if cfg.numeric == "log" else NUMERIC + CATEGORICAL

    if vocabularies is None:
        counts: dict[str, pd.Series] = {}  # column -> token -> count over the training rows
        for chunk in _chunks(path, fmt, n_train, cfg.chunksize):
            for c in sparse_cols:
                vc = _tokens(chunk, c).value_counts(dropna=False)
                counts[c] = counts[c].add(vc, fill_value=0) if c in counts else vc
        empty = pd.Series([], dtype=np.int64)
        vocabularies = {c: Vocabulary.from_counts(counts.get(c, empty), cfg.min_count) for c in sparse_cols}
    elif sorted(vocabularies) != sorted(sparse_cols):
        raise ValueError(
            f"vocabularies must be given for exactly {list(sparse_cols)} with numeric={cfg.numeric!r}, "
            f"got {sorted(vocabularies)}"
        )

    ids = np.zeros((n, len(sparse_cols)), dtype=np.int64)  # [N, F]
    dense = np.zeros((n, len(NUMERIC) if cfg.numeric == "log" else 0), dtype=np.float32)  # [N, 13 or 0]
    labels = np.zeros(n, dtype=np.float32)  # [N]
    row = 0
    for chunk in _chunks(path, fmt, n, cfg.chunksize):
        rows = slice(row, row + len(chunk.labels))
        labels[rows] = chunk.labels
        for j, c in enumerate(sparse_cols):
            ids[rows, j] = vocabularies[c].transform(_tokens(chunk, c))
        if cfg.numeric == "log":
            dense[rows] = np.log1p(np.nan_to_num(np.maximum(chunk.numeric, 0.0), nan=0.0))
        row = rows.stop
    log.info("read %s: %d rows, click rate %.4f", path, n, float(labels.mean()) if n else 0.0)

    schema = Schema(
        tuple(FeatureSpec(c, vocabularies[c].size) for c in sparse_cols),
        dense=NUMERIC if cfg.numeric == "log" else (),
    )
    data = CTRData(schema, torch.from_numpy(ids), {}, torch.from_numpy(dense), torch.from_numpy(labels))
    train, valid, test = data.split(cfg.split)
    return CriteoData(train, valid, test, vocabularies, cfg)


# -- reading and checking lines --------------------------------------------------------------


@dataclass(frozen=True)
class _Format:
    sep: str
    header: bool


@dataclass
class _Chunk:
    """Checked rows of one chunk: labels [n], numeric [n, 13] (NaN = missing), raw categories."""

    labels: np.ndarray
    numeric: np.ndarray
    categorical: pd.DataFrame  # [n, 26] str, "" = missing


def _sniff(path: Path) -> _Format:
    """TAB or comma from the first line; a header if its first field is `label`."""
    if not path.is_file():
        raise FileNotFoundError(f"no Criteo file at {path}")
    with path.open(encoding="utf-8", newline="") as f:
        first = f.readline()
    if not first:
        raise ValueError(f"{path}: the file is empty; expected Criteo rows (label, I1..I13, C1..C26)")
    first = first.rstrip("\r\n")
    sep = "\t" if "\t" in first else "," if "," in first else None
    if sep is None:
        raise ValueError(
            f"{path}, line 1: neither TAB nor comma separated; expected 40 fields (label, I1..I13, C1..C26)"
        )
    fields = first.split(sep)
    if fields[0].strip().lower() != LABEL:
        return _Format(sep, header=False)
    if tuple(fields) != COLUMNS:
        wrong = next((i for i, (a, b) in enumerate(zip(fields, COLUMNS)) if a != b), min(len(fields), len(COLUMNS)))
        raise ValueError(
            f"{path}, line 1: the header must be {','.join(COLUMNS)}; "
            f"got {len(fields)} names, the first difference at column {wrong + 1}"
        )
    return _Format(sep, header=True)


def _count_rows(path: Path, fmt: _Format) -> int:
    """Data lines, counted on raw bytes (fast): newlines, plus a last line without one."""
    lines, last = 0, b"\n"
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"
    rows = lines - fmt.header
    if rows < 1:
        raise ValueError(f"{path}: a header but no data rows")
    return rows


def _chunks(path: Path, fmt: _Format, nrows: int, chunksize: int) -> Iterator[_Chunk]:
    """The first `nrows` data rows, checked, in chunks of at most `chunksize` lines."""
    with path.open(encoding="utf-8", newline="") as f:
        first_line = 1 + fmt.header  # 1-based file line of the chunk's first row
        if fmt.header:
            f.readline()
        left = nrows
        while left > 0:
            lines = list(islice(f, min(chunksize, left)))
            if not lines:
                break
            yield _parse(lines, path, fmt.sep, first_line)
            first_line += len(lines)
            left -= len(lines)


def _parse(lines: list[str], path: Path, sep: str, first_line: int) -> _Chunk:
    # Count fields ourselves: pandas pads short lines and silently drops or shifts fields of
    # long ones, so only lines known to have 40 fields reach it.
    want = len(COLUMNS) - 1
    for i, line in enumerate(lines):
        if line.count(sep) != want:
            n_fields = line.count(sep) + 1 if line.strip("\r\n") else 0
            raise ValueError(
                f"{path}, line {first_line + i}: {n_fields} fields, expected {len(COLUMNS)} "
                f"({'TAB' if sep == chr(9) else 'comma'}-separated label, I1..I13, C1..C26)"
            )
    df = pd.read_csv(
        io.StringIO("".join(lines)), sep=sep, header=None, names=list(COLUMNS), dtype=str,
        na_filter=False, quoting=csv.QUOTE_NONE, skip_blank_lines=False, engine="c",
    )  # fmt: skip
    if len(df) != len(lines):  # cannot happen with 40 fields per line and no quoting
        raise ValueError(f"{path}, lines {first_line}..{first_line + len(lines) - 1}: parsed {len(df)} rows")

    label = df[LABEL].map(_LABELS)
    if label.isna().any():
        i = int(np.flatnonzero(label.isna().to_numpy())[0])
        raise ValueError(f"{path}, line {first_line + i}: label {df[LABEL].iloc[i]!r} is not 0 or 1")

    numeric = np.empty((len(df), len(NUMERIC)), dtype=np.float64)  # [n, 13]
    for j, c in enumerate(NUMERIC):
        raw = df[c]
        x = pd.to_numeric(raw.where(raw != "", None), errors="coerce").to_numpy(dtype=np.float64)
        bad = (raw != "").to_numpy() & ~np.isfinite(x)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{path}, line {first_line + i}: column {c} has {raw.iloc[i]!r}, not a finite number "
                "(expected an integer count, or empty for missing)"
            )
        numeric[:, j] = x
    return _Chunk(label.to_numpy(dtype=np.float32), numeric, df[list(CATEGORICAL)])


def _tokens(chunk: _Chunk, column: str) -> pd.Series:
    """What the vocabulary of `column` counts: the raw category, or the numeric bucket."""
    if column in CATEGORICAL:
        return chunk.categorical[column]
    return pd.Series(_bucket(chunk.numeric[:, NUMERIC.index(column)]))


def _bucket(x: np.ndarray) -> np.ndarray:
    """Winners' buckets [n] int64: floor(ln(x)²) >= 1 for x > 2, floor(x) - 3 <= -1 for x <= 2,
    0 for missing (NaN)."""
    out = np.zeros(x.shape, dtype=np.int64)
    big = x > 2
    out[big] = np.floor(np.log(x[big]) ** 2).astype(np.int64)
    small = (x <= 2) & ~np.isnan(x)
    out[small] = np.floor(x[small]).astype(np.int64) - 3
    return out
