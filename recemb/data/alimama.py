"""Reader of the Alimama / Taobao display-ad CTR data in the DMR format (Lyu et al., AAAI
2020; the sample of ../shared/data/alimama_dmr_sample): one impression per line with the
user's last 50 behaviours, for target-attention models.

A line is 267 comma-separated numbers (history length H = 50): behaviour type, category
and brand of each of the last H behaviours (columns 0-149), their validity mask (150-199,
1 = a behaviour, 0 = padding), DMR's match mask (200-249, not used), the user id (250), 8
user profile fields (251-258), the target ad's group id `mid`, `cate_id`, `campaign_id`,
`customer` and `brand` (259-263), `price` (264, a float, the one dense feature), `pid`
(265) and the click label (266). A line with another field count, a field that is not a
number, an id that is not a non-negative integer, a mask or label other than 0/1, or a
price that is not finite is malformed (refused with file and line, or skipped and counted).

Features: the user, profile and target fields are single-valued; `btag_his`, `cate_his`
and `brand_his` are sequences of the behaviours the mask marks, oldest first (the sample
pads on the left: the most recent behaviour is last). `cate_his` shares the table of
`cate_id` and `brand_his` that of `brand` (one vocabulary each), so a target-attention
model pairs them with the target ad; `btag_his` has its own table. `max_len` below H keeps
the most recent behaviours (truncated rows are counted in the report).

Rows are split in file order by `split` (the sample has no timestamps). Vocabularies are
fitted on the training rows (id 0: out of vocabulary, also for values seen fewer than
`min_count` times); rows are grouped by user for GAUC.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from recemb.data.batch import CTRData, Jagged
from recemb.data.lines import BadLines, RowChecks, first_line, read_chunks
from recemb.data.tabular import ReadOptions, Source
from recemb.data.vocab import Vocabulary
from recemb.features import FeatureSpec, Schema

log = logging.getLogger(__name__)

H = 50
FIELDS = 267
FILE_NAMES: tuple[str, ...] = ("alimama_sampled_train.txt", "alimama_sampled.txt")
SEQUENCES: dict[str, tuple[int, str]] = {  # name -> (first column, logical table)
    "btag_his": (0, "btag_his"),
    "cate_his": (50, "cate_id"),
    "brand_his": (100, "brand"),
}
MASK = 150
SINGLES: dict[str, int] = {
    "uid": 250, "cms_segid": 251, "cms_group_id": 252, "final_gender_code": 253, "age_level": 254,
    "pvalue_level": 255, "shopping_level": 256, "occupation": 257, "new_user_class_level": 258,
    "mid": 259, "cate_id": 260, "campaign_id": 261, "customer": 262, "brand": 263, "pid": 265,
}  # fmt: skip
PRICE, LABEL = 264, 266
PARTS: tuple[str, ...] = ("train", "valid", "test")


@dataclass(frozen=True)
class AlimamaOptions:
    """max_len: behaviours kept (the most recent, at most 50); min_count: rarer ids -> OOV."""

    max_len: int = H
    min_count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.max_len <= H:
            raise ValueError(f"AlimamaOptions.max_len must be in [1, {H}] (the format keeps {H}), got {self.max_len}")
        if self.min_count < 1:
            raise ValueError(f"AlimamaOptions.min_count must be >= 1, got {self.min_count}")


def load_alimama(
    path: str | Path,
    options: AlimamaOptions = AlimamaOptions(),
    read: ReadOptions = ReadOptions(),
    vocabularies: dict[str, Any] | None = None,
):
    """DataSplits of a DMR-format file (or the folder holding it); `vocabularies` (logical
    table -> Vocabulary or its to_dict(), as saved with a run) replace the fitted ones."""
    from recemb.data import DataSplits

    file = _file(Path(path))
    bad = BadLines(read.on_bad_lines)
    rows = _rows(file, read, bad)  # [n, 267] float64
    if rows.shape[0] == 0:
        raise ValueError(f"{file}: no rows left ({bad.count} malformed lines skipped)")
    ids = rows[:, :MASK].astype(np.int64)
    mask = rows[:, MASK : MASK + H] == 1  # [n, H]
    keep_from = _keep_most_recent(mask, options.max_len)  # [n, H]: the behaviours kept
    truncated = int((mask.sum(1) > options.max_len).sum())

    bounds = Source.split_bounds(rows.shape[0], read.split)
    train = slice(0, bounds[0])
    tables = {**{n: n for n in SINGLES}, **{n: t for n, (_, t) in SEQUENCES.items()}}
    if vocabularies is None:
        values: dict[str, list[np.ndarray]] = {}
        for name, col in SINGLES.items():
            values.setdefault(name, []).append(rows[train, col].astype(np.int64))
        for name, (col, table) in SEQUENCES.items():
            values.setdefault(table, []).append(ids[train, col : col + H][keep_from[train]])
        vocab = {t: Vocabulary.fit(np.concatenate(v), options.min_count) for t, v in values.items()}
    else:
        vocab = {t: v if isinstance(v, Vocabulary) else Vocabulary.from_dict(v) for t, v in vocabularies.items()}
        if sorted(vocab) != sorted(set(tables.values())):
            want = sorted(set(tables.values()))
            raise ValueError(f"vocabularies must be given for the tables {want}, got {sorted(vocab)}")

    schema = Schema(
        (
            *(FeatureSpec(n, vocab[n].size) for n in SINGLES),
            *(FeatureSpec(n, vocab[t].size, "sequence", max_len=options.max_len, table=None if t == n else t)
              for n, (_, t) in SEQUENCES.items()),
        ),
        dense=("price",),
    )  # fmt: skip
    single = np.stack([vocab[n].transform(rows[:, c].astype(np.int64)) for n, c in SINGLES.items()], axis=1)
    lengths = keep_from.sum(1)
    offsets = torch.from_numpy(np.r_[0, np.cumsum(lengths)].astype(np.int64))
    jagged = {
        n: Jagged(torch.from_numpy(vocab[t].transform(ids[:, c : c + H][keep_from])), offsets)
        for n, (c, t) in SEQUENCES.items()
    }  # row-major boolean indexing: each row's kept behaviours, oldest first
    whole = CTRData(
        schema,
        torch.from_numpy(single),
        jagged,
        torch.from_numpy(rows[:, [PRICE]].astype(np.float32)),
        torch.from_numpy(rows[:, LABEL].astype(np.float32)),
    )
    users = torch.from_numpy(rows[:, SINGLES["uid"]].astype(np.int64))
    parts = {p: torch.arange(a, b) for p, a, b in zip(PARTS, (0, *bounds[:2]), bounds)}
    report = {"rows": int(rows.shape[0]), "skipped_lines": bad.count, "truncated_histories": truncated,
              "empty_histories": int((lengths == 0).sum())}  # fmt: skip
    log.info("read %s: %d rows (train %d, valid %d, test %d)", file, rows.shape[0], *(len(r) for r in parts.values()))
    return DataSplits(
        *(whole.take(parts[p]) for p in PARTS),
        vocabularies={t: v.to_dict() for t, v in vocab.items()},
        report=report,
        groups={p: users[r] for p, r in parts.items()},
    )


def _file(path: Path) -> Path:
    if path.is_dir():
        found = next((path / n for n in FILE_NAMES if (path / n).is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{path} has no DMR-format file (looked for {list(FILE_NAMES)})")
        return found
    if not path.is_file():
        raise FileNotFoundError(f"no DMR-format file or folder at {path}")
    return path


def _keep_most_recent(mask: np.ndarray, max_len: int) -> np.ndarray:
    """[n, H]: the marked positions, at most the last `max_len` of each row."""
    from_end = np.cumsum(mask[:, ::-1], axis=1)[:, ::-1]  # marked positions at or after each
    return mask & (from_end <= max_len)


def _rows(path: Path, read: ReadOptions, bad: BadLines) -> np.ndarray:
    """The well-formed lines as numbers [n, 267], in file order."""
    first_line(path, "utf-8", f"{FIELDS} comma-separated numbers")
    out = []
    for lc in read_chunks(path, "utf-8", read.chunksize, limit=read.max_rows):
        counts = np.fromiter((s.count(",") + 1 if s else 0 for s in lc.text), dtype=np.int64, count=len(lc.text))
        checks = RowChecks(len(lc.text))
        checks.fail(lc.undecodable, lambda i: "not utf-8 text")
        checks.fail(~lc.undecodable & (counts != FIELDS), lambda i: f"{counts[i]} fields, expected {FIELDS}")
        ok = np.flatnonzero(~lc.undecodable & (counts == FIELDS))
        numbers = np.full((len(lc.text), FIELDS), np.nan)
        if ok.size:
            frame = pd.DataFrame([lc.text[i].split(",") for i in ok])
            numbers[ok] = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        finite = np.isfinite(numbers)
        checked = np.zeros(len(lc.text), dtype=bool)
        checked[ok] = True
        bad_number = checked & ~finite.all(1)
        checks.fail(bad_number, lambda i: f"field {int(np.argmin(finite[i])) + 1} is not a number")
        good = checked & ~bad_number
        ids = np.r_[0:MASK, list(SINGLES.values())]
        not_id = good & ((numbers[:, ids] < 0) | (numbers[:, ids] != np.floor(numbers[:, ids]))).any(1)
        checks.fail(not_id, lambda i: "an id field is not a non-negative integer")
        flags = numbers[:, [*range(MASK, MASK + H), LABEL]]
        not_flag = good & ~np.isin(flags, (0.0, 1.0)).all(1)
        checks.fail(not_flag, lambda i: "a mask or the label (last field) is not 0 or 1")
        keep = checks.report(bad, path, lc.line_numbers)
        out.append(numbers[keep])
    return np.concatenate(out) if out else np.zeros((0, FIELDS))
