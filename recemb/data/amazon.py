"""Reader of user -> item interaction sequences in the SASRec layout (the Amazon "Video
Games" file of ../shared/data/amazon_video_games_seq): CTR samples of (the user's previous
items, a target item, a label), for target-attention models (DIN, TWIN, DARE).

File: one interaction per line, `<user> <item>` (whitespace-separated positive integers),
each user's lines together and in time order, users in increasing order. A line that is
not two integers, or whose user comes after a larger user id (so that user's lines are not
contiguous), is malformed: refused with file and line, or skipped and counted
(`on_bad_lines=skip`).

Samples. For a user's interaction at position p >= min_history (0-based), the history is
the items at positions max(0, p - max_len) .. p - 1 (the most recent max_len; longer ones
are truncated and counted in the report as `truncated_histories`), the target is the item
at p with label 1, and `negatives` (2, as DARE) further rows share that history with a
target drawn by item popularity (counts over the training interactions, never the
positive item itself) and label 0.

Split by time, leave-last-out per user (as SASRec): a user's last interaction is the test
sample, the one before the validation sample, the earlier ones training samples; users
with fewer than 3 interactions go to training whole. The `split` fractions are not used.
Ids are the file's integers (cardinality = the largest item id + 1; the file's ids start
at 1, so row 0 is never read). Rows are grouped by user for GAUC (`DataSplits.groups`).
`max_rows` reads the first lines only (its last user may be cut short).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recemb.data.batch import CTRData, Jagged
from recemb.data.lines import BadLines, RowChecks, first_line, read_chunks
from recemb.data.tabular import ReadOptions
from recemb.features import FeatureSpec, Schema

log = logging.getLogger(__name__)

FILE_NAMES: tuple[str, ...] = ("Video.txt",)
TARGET, HISTORY = "item", "hist_item"
PARTS: tuple[str, ...] = ("train", "valid", "test")


@dataclass(frozen=True)
class SequenceOptions:
    """How samples are made from the interactions (see the module docstring)."""

    max_len: int = 50
    negatives: int = 2
    neg_seed: int = 0
    min_history: int = 1

    def __post_init__(self) -> None:
        if self.max_len < 1:
            raise ValueError(f"SequenceOptions.max_len must be >= 1, got {self.max_len}")
        if self.negatives < 0:
            raise ValueError(f"SequenceOptions.negatives must be >= 0, got {self.negatives}")
        if self.neg_seed < 0:
            raise ValueError(f"SequenceOptions.neg_seed must be >= 0, got {self.neg_seed}")
        if self.min_history < 0:
            raise ValueError(f"SequenceOptions.min_history must be >= 0, got {self.min_history}")


def load_amazon(path: str | Path, options: SequenceOptions = SequenceOptions(), read: ReadOptions = ReadOptions()):
    """DataSplits of the interaction file at `path` (or the folder holding Video.txt)."""
    from recemb.data import DataSplits

    file = _file(Path(path))
    bad = BadLines(read.on_bad_lines)
    users, items = _interactions(file, read, bad)
    if users.size == 0:
        raise ValueError(f"{file}: no interactions left ({bad.count} malformed lines skipped)")

    first = np.r_[True, users[1:] != users[:-1]]  # [n] a user's first line
    start = np.maximum.accumulate(np.where(first, np.arange(users.size), 0))
    position = np.arange(users.size) - start  # [n] 0-based position in the user's sequence
    count = np.diff(np.r_[np.flatnonzero(first), users.size])[np.cumsum(first) - 1]  # [n] the user's lines
    role = np.zeros(users.size, dtype=np.int64)  # 0 train, 1 valid, 2 test
    role[(count >= 3) & (position == count - 2)] = 1
    role[(count >= 3) & (position == count - 1)] = 2

    cardinality = int(items.max()) + 1
    popularity = np.bincount(items[role == 0], minlength=cardinality).astype(np.float64)
    if popularity.sum() == 0:
        raise ValueError(f"{file}: no training interactions to draw negatives from")
    rng = np.random.default_rng(options.neg_seed)

    schema = Schema(
        (
            FeatureSpec(TARGET, cardinality),
            FeatureSpec(HISTORY, cardinality, "sequence", max_len=options.max_len, table=TARGET),
        )
    )
    splits, groups = {}, {}
    report = {"rows": 0, "skipped_lines": bad.count, "truncated_histories": 0, "empty_histories": 0,
              "users": int(first.sum()), "interactions": int(users.size)}  # fmt: skip
    for r, part in enumerate(PARTS):
        positives = np.flatnonzero((role == r) & (position >= options.min_history))  # line of each positive
        negatives = _negatives(rng, popularity, items[positives], options.negatives)  # [P, negatives]
        per = 1 + options.negatives
        line = np.repeat(positives, per)  # [N] each row's line: positive, then its negatives
        target = np.concatenate([items[positives, None], negatives], axis=1).reshape(-1)
        labels = np.tile(np.r_[1.0, np.zeros(options.negatives)], positives.size).astype(np.float32)
        lengths = np.minimum(position[line], options.max_len)  # [N]
        report["truncated_histories"] += int((position[line] > options.max_len).sum())
        report["empty_histories"] += int((lengths == 0).sum())
        splits[part] = CTRData(
            schema,
            torch.from_numpy(target.astype(np.int64)).view(-1, 1),
            {HISTORY: _histories(items, line, lengths)},
            torch.zeros(line.size, 0),
            torch.from_numpy(labels),
        )
        groups[part] = torch.from_numpy(users[line])
        report["rows"] += int(line.size)
    if report["truncated_histories"]:
        log.info("%s: %d histories longer than max_len=%d kept their most recent items", file,
                 report["truncated_histories"], options.max_len)  # fmt: skip
    log.info("read %s: %d rows (train %d, valid %d, test %d)", file, report["rows"], *(len(splits[p]) for p in PARTS))
    return DataSplits(splits["train"], splits["valid"], splits["test"], report=report, groups=groups)


def _file(path: Path) -> Path:
    if path.is_dir():
        found = next((path / n for n in FILE_NAMES if (path / n).is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{path} has no interaction file (looked for {list(FILE_NAMES)})")
        return found
    if not path.is_file():
        raise FileNotFoundError(f"no interaction file or folder at {path}")
    return path


def _interactions(path: Path, read: ReadOptions, bad: BadLines) -> tuple[np.ndarray, np.ndarray]:
    """Users [n] and items [n] (int64) of the well-formed lines, in file order."""
    first_line(path, "utf-8", "`<user> <item>` lines")
    users, items = [], []
    last_user = -1  # the largest user so far: a smaller one later breaks contiguity
    for lc in read_chunks(path, "utf-8", read.chunksize, limit=read.max_rows):
        text = pd.Series(lc.text, dtype=object)
        fields = text.str.extract(r"^\s*(\d{1,18})\s+(\d{1,18})\s*$")
        checks = RowChecks(len(text))
        checks.fail(lc.undecodable, lambda i: "not utf-8 text")
        malformed = fields[0].isna().to_numpy() & ~lc.undecodable
        checks.fail(malformed, lambda i: f"{lc.text[i]!r} is not `<user> <item>`, two non-negative integers")
        u = pd.to_numeric(fields[0]).fillna(-1).to_numpy(dtype=np.int64)
        i = pd.to_numeric(fields[1]).fillna(-1).to_numpy(dtype=np.int64)
        ok = ~malformed & ~lc.undecodable
        # the largest user before each line (well-formed lines only)
        seen = np.maximum.accumulate(np.r_[last_user, np.where(ok, u, -1)])[:-1]
        out_of_order = ok & (u < seen)
        checks.fail(
            out_of_order,
            lambda k: f"user {u[k]} after user {seen[k]}: each user's lines must be together and users in "
            "increasing order (the file is sorted by user, then time)",
        )
        keep = checks.report(bad, path, lc.line_numbers)
        users.append(u[keep])
        items.append(i[keep])
        if keep.any():
            last_user = max(last_user, int(u[keep].max()))
    return np.concatenate(users), np.concatenate(items)


def _negatives(rng: np.random.Generator, popularity: np.ndarray, positive: np.ndarray, n: int) -> np.ndarray:
    """[P, n] items drawn by popularity, each different from its row's positive item."""
    p = popularity / popularity.sum()
    out = rng.choice(p.size, size=(positive.size, n), p=p)
    for _ in range(100):  # redraw clashes with the positive; rare unless one item dominates
        clash = out == positive[:, None]
        if not clash.any():
            return out
        out[clash] = rng.choice(p.size, size=int(clash.sum()), p=p)
    raise ValueError("could not draw negatives different from the positive item (one item holds all interactions?)")


def _histories(items: np.ndarray, line: np.ndarray, lengths: np.ndarray) -> Jagged:
    """Row k's history: items[line[k] - lengths[k] : line[k]] (the user's previous items)."""
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
    source = np.repeat(line - lengths, lengths) + within
    return Jagged(torch.from_numpy(items[source].astype(np.int64)), torch.from_numpy(offsets))
