"""Reading text data files in chunks of lines, splitting them into fields, and refusing or
skipping malformed lines by file and 1-based line number. Shared by every file reader.

- Files are read as bytes and cut at b"\\n" only, so LF and CRLF files give the same lines
  (a trailing "\\r" is dropped) and line numbers are those of any editor; the encoding must
  therefore be ASCII-compatible (UTF-8, latin-1, ...). A UTF-8 byte order mark at the start
  is dropped. A line that does not decode in the file's encoding is malformed like any other.
- Fields are counted before pandas sees a line: pandas pads short lines and shifts or drops
  the fields of long ones, so only lines with the right count reach it. A chunk with a
  double quote in it is split with the csv module, one line at a time (a quoted separator
  is not a separator; a record must fit on one line).
- `BadLines` is the policy: "error" raises ValueError("FILE, line N: reason") at the first
  malformed line; "skip" drops malformed lines and counts them (the count goes to the run
  report), logging the first few.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

OnBadLines = Literal["error", "skip"]
_LOGGED = 5  # malformed lines logged one by one in skip mode; the rest only counted


class BadLines:
    """What happens to malformed lines: raise at the first, or skip and count them."""

    def __init__(self, policy: OnBadLines = "error", quiet: bool = False) -> None:
        if policy not in ("error", "skip"):
            raise ValueError(f"on_bad_lines must be 'error' or 'skip', got {policy!r}")
        self.policy = policy
        self.quiet = quiet  # a second pass over lines already counted
        self.count = 0

    def reject(self, path: Path, lines: np.ndarray, reason: str) -> None:
        """Lines `lines` (1-based, increasing) of `path` are malformed; `reason` is the first's."""
        if len(lines) == 0:
            return
        if self.policy == "error":
            raise ValueError(f"{path}, line {int(lines[0])}: {reason}")
        if not self.quiet and self.count < _LOGGED:
            log.warning("skipped %s, line %d: %s", path, int(lines[0]), reason)
        self.count += len(lines)


class RowChecks:
    """The malformed rows of one chunk, with the reason of the first (in file order)."""

    def __init__(self, n: int) -> None:
        self.bad = np.zeros(n, dtype=bool)
        self._first = n
        self.reason = ""

    def fail(self, mask: np.ndarray, reason_at: Callable[[int], str]) -> None:
        """Rows where `mask` holds are malformed; reason_at(i) words why row i is."""
        hits = np.flatnonzero(mask)
        if hits.size:
            self.bad |= mask
            if hits[0] < self._first:
                self._first = int(hits[0])
                self.reason = reason_at(self._first)

    def report(self, bad_lines: BadLines, path: Path, line_numbers: np.ndarray) -> np.ndarray:
        """Hand the malformed rows to the policy; the mask of the rows kept."""
        bad_lines.reject(path, line_numbers[self.bad], self.reason)
        return ~self.bad


@dataclass
class LineChunk:
    """Consecutive lines without their line endings; `undecodable` [n] marks lines that are
    not text in the file's encoding (given as "")."""

    text: list[str]
    first_line: int  # 1-based line number of text[0]
    undecodable: np.ndarray

    @property
    def line_numbers(self) -> np.ndarray:
        return np.arange(self.first_line, self.first_line + len(self.text), dtype=np.int64)


def first_line(path: Path, encoding: str, what: str) -> str:
    """Line 1 without its ending; an empty file is refused whatever the policy."""
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path} ({what})")
    with path.open("rb") as f:
        raw = f.readline()
    if not raw:
        raise ValueError(f"{path}: the file is empty; expected {what}")
    try:
        return _strip(raw.decode(encoding)).lstrip("\ufeff")
    except UnicodeDecodeError:
        raise ValueError(f"{path}, line 1: not {encoding} text") from None


def count_lines(path: Path) -> int:
    """Lines, counted on raw bytes (fast): newlines, plus a last line without one."""
    lines, last = 0, b"\n"
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def read_chunks(
    path: Path, encoding: str, chunksize: int, skip: int = 0, limit: int | None = None
) -> Iterator[LineChunk]:
    """The lines after the first `skip`, at most `limit` of them, `chunksize` at a time."""
    with path.open("rb") as f:
        for _ in range(skip):
            f.readline()
        line = skip + 1
        left = limit if limit is not None else -1
        while left != 0:
            raw = list(islice(f, chunksize if left < 0 else min(chunksize, left)))
            if not raw:
                break
            yield _decode(raw, encoding, line)
            line += len(raw)
            left -= len(raw) if left > 0 else 0


def _decode(raw: list[bytes], encoding: str, first: int) -> LineChunk:
    bad = np.zeros(len(raw), dtype=bool)
    try:
        text = [_strip(s) for s in b"".join(raw).decode(encoding).split("\n")[: len(raw)]]
    except UnicodeDecodeError:
        text = []
        for i, s in enumerate(raw):
            try:
                text.append(_strip(s.decode(encoding)))
            except UnicodeDecodeError:
                text.append("")
                bad[i] = True
    if first == 1 and text:
        text[0] = text[0].lstrip("\ufeff")
    return LineChunk(text, first, bad)


def _strip(line: str) -> str:
    line = line[:-1] if line.endswith("\n") else line
    return line[:-1] if line.endswith("\r") else line


def split_fields(text: Sequence[str], sep: str) -> tuple[list[list[str]] | None, np.ndarray]:
    """Fields per line [n] (0 for a blank line, -1 for unbalanced quotes), and the split
    lines when quotes forced the csv module to split them (else None: split with `to_frame`)."""
    if len(sep) == 1 and any('"' in s for s in text):
        rows, counts = [], np.empty(len(text), dtype=np.int64)
        for i, s in enumerate(text):
            try:
                row = next(csv.reader([s], delimiter=sep, quotechar='"', strict=True)) if s else []
            except csv.Error:
                row, counts[i] = [], -1
            else:
                counts[i] = len(row)
            rows.append(row)
        return rows, counts
    return None, np.fromiter((s.count(sep) + 1 if s else 0 for s in text), dtype=np.int64, count=len(text))


def to_frame(
    text: Sequence[str], split: list[list[str]] | None, keep: np.ndarray, sep: str, names: Sequence[str]
) -> pd.DataFrame:
    """The kept lines as a frame of strings [kept, len(names)] ("" = empty field); every kept
    line has len(names) fields (checked with `split_fields`)."""
    rows = np.flatnonzero(keep)
    if split is not None:
        return pd.DataFrame([split[i] for i in rows], columns=list(names), dtype=str) if rows.size else _empty(names)
    if not rows.size:
        return _empty(names)
    if len(sep) > 1:
        return pd.DataFrame([text[i].split(sep) for i in rows], columns=list(names), dtype=str)
    body = "\n".join(text[i] for i in rows) + "\n"
    frame = pd.read_csv(
        io.StringIO(body), sep=sep, header=None, names=list(names), dtype=str, na_filter=False,
        quoting=csv.QUOTE_NONE, skip_blank_lines=False, engine="c", lineterminator="\n",
    )  # fmt: skip
    if len(frame) != rows.size:  # cannot happen: counted fields, no quoting
        raise ValueError(f"parsed {len(frame)} rows from {rows.size} lines")
    return frame


def _empty(names: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({n: pd.Series([], dtype=str) for n in names})


def describe_sep(sep: str) -> str:
    return {"\t": "TAB", ",": "comma", " ": "space", "|": "'|'"}.get(sep, repr(sep))
