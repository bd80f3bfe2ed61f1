"""Reader of libFM files with one-hot fields in fixed positions, and of Frappe's file layout
(the NFM/AFN CTR version: `frappe.{train,validation,test}.libfm`, schema `data/frappe.yaml`).

A line is `label idx:1 idx:1 ...`, whitespace-separated, one `idx:1` pair per field in the
schema file's column order (Frappe: user, item, daytime, weekday, isweekend, homework, cost,
weather, country, city). The token of a field is its global index as written: each field
has its own Vocabulary, so the offsets of the global numbering need not be subtracted. A
line with another token count, a pair that is not `INDEX:1` (one-hot: the value must be 1),
or a label outside the rule (Frappe: 1 -> 1, -1 -> 0; 0 also reads as 0, for AFN's copy) is
malformed. CRLF line endings (Frappe's) are read.

Layouts of `load_frappe(PATH)`:
- PATH a file: split in file order by `split` (70/10/20 by default), like any file.
- PATH a folder with the train file: the published split, train / validation / test files
  as they are (`split` is not used).
- PATH a folder without it (as in ../shared/data/frappe, whose train file could not be
  obtained): the validation file is split in file order into train and validation in the
  ratio split[0] : split[1] (7 : 1 with the default split, i.e. 7/8 and 1/8), and the test
  file is the test part. Results are then not comparable to published Frappe numbers,
  which train on the 202,027-row train file.
Vocabularies are fitted on the training rows only, in every layout.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from recemb.data.lines import BadLines, LineChunk, RowChecks, count_lines, first_line, read_chunks
from recemb.data.schema_file import SchemaFile, find_schema_file
from recemb.data.tabular import LoadedData, RawChunk, ReadOptions, Source, encode
from recemb.data.vocab import Vocabulary

ROLES: tuple[str, ...] = ("train", "valid", "test")


def load_frappe(
    path: str | Path,
    schema: SchemaFile | str | Path = "frappe",
    options: ReadOptions = ReadOptions(),
    vocabularies: dict[str, Vocabulary] | None = None,
    dense_stats: dict[str, dict[str, float]] | None = None,
) -> LoadedData:
    """Read a libFM file or a folder of Frappe files (layouts in the module docstring)."""
    sf = schema if isinstance(schema, SchemaFile) else find_schema_file(schema)
    path = Path(path)
    if not path.is_dir():
        return encode([libfm_source(path, sf, options)], sf, options, vocabularies, dense_stats)
    files = {role: _find(path, sf, role) for role in ROLES}
    if files["valid"] is None or files["test"] is None:
        missing = [r for r in ("valid", "test") if files[r] is None]
        raise FileNotFoundError(
            f"{path} lacks the {' and '.join(missing)} file(s) of schema {sf.name!r} "
            f"(names: {[sf.files.get(r) for r in missing]}); give a folder with them or one libFM file"
        )
    if files["train"] is not None:
        sources = [
            libfm_source(files["train"], sf, options, (1, 0, 0)),
            libfm_source(files["valid"], sf, options, (0, 1, 0)),
        ]
    else:
        train, valid = options.split[0], options.split[1]
        if train + valid <= 0:
            raise ValueError(f"split {options.split} leaves no rows of {files['valid'].name} for training")
        sources = [libfm_source(files["valid"], sf, options, (train / (train + valid), valid / (train + valid), 0))]
    sources.append(libfm_source(files["test"], sf, options, (0, 0, 1)))
    return encode(sources, sf, options, vocabularies, dense_stats)


def libfm_source(path: Path, sf: SchemaFile, options: ReadOptions, split: Sequence[float] | None = None) -> Source:
    """The rows of one libFM file, split by `split` (default `options.split`)."""
    label, fields = sf.label.column, [c.name for c in sf.columns if c.type != "label"]
    if sf.columns[0].name != label:
        raise ValueError(f"{sf.where()}: the first column of a libFM schema must be the label, got {sf.names[0]!r}")
    first_line(path, sf.encoding, f"libFM lines: a label and {len(fields)} INDEX:1 pairs")
    n = count_lines(path)
    if options.max_rows is not None:
        n = min(n, options.max_rows)
    bounds = Source.split_bounds(n, options.split if split is None else split)

    def chunks(stop: int, bad: BadLines) -> Iterator[RawChunk]:
        for lc in read_chunks(path, sf.encoding, options.chunksize, limit=stop):
            yield _libfm_chunk(lc, path, label, fields, sf.encoding, bad)

    return Source(path, bounds, chunks)


def _libfm_chunk(
    lc: LineChunk, path: Path, label: str, fields: list[str], encoding: str, bad: BadLines
) -> RawChunk:
    text = [" ".join(s.split()) for s in lc.text]  # tokens separated by one space
    counts = np.fromiter((s.count(" ") + 1 if s else 0 for s in text), dtype=np.int64, count=len(text))
    want = 1 + len(fields)
    checks = RowChecks(len(text))
    checks.fail(lc.undecodable, lambda i: f"not {encoding} text")
    checks.fail(
        ~lc.undecodable & (counts != want),
        lambda i: f"{counts[i]} tokens, expected {want}: a label and {len(fields)} INDEX:1 pairs ({', '.join(fields)})",
    )
    ok = np.flatnonzero(~lc.undecodable & (counts == want))  # lines with the right token count
    labels, index, one_hot = _pairs([text[i] for i in ok], len(fields))  # [n], [n, F] str, [n, F] bool
    for j, name in enumerate(fields):
        wrong = np.zeros(len(text), dtype=bool)
        wrong[ok[~one_hot[:, j]]] = True
        checks.fail(
            wrong,
            lambda i, j=j, name=name: (
                f"pair {j + 1} ({name}) is {text[i].split()[j + 1]!r}, expected INDEX:1 (one-hot)"
            ),
        )
    numbers = lc.line_numbers
    keep = checks.report(bad, path, numbers)
    rows = keep[ok]
    frame = pd.DataFrame({label: labels[rows], **{name: index[rows, j] for j, name in enumerate(fields)}}, dtype=str)
    return RawChunk(frame, numbers[keep] - 1, numbers[keep], len(text))


def _pairs(lines: list[str], n_fields: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels [n] and field indices [n, F] as strings, and whether each pair is INDEX:1
    [n, F], of lines of 1 + F space-separated tokens. Fast path: pandas' C parser on the
    pairs cut at ':'; a chunk it refuses (a pair without one colon, a non-integer index)
    is redone line by line in Python to find the malformed pairs."""
    n = len(lines)
    if all(s.count(":") == n_fields for s in lines):
        names = ["label", *(f"{k}{j}" for j in range(n_fields) for k in ("i", "v"))]
        try:
            frame = pd.read_csv(
                io.StringIO("\n".join(lines).replace(":", " ") + "\n"), sep=" ", header=None, names=names,
                dtype={"label": str, **{f"i{j}": np.int64 for j in range(n_fields)},
                       **{f"v{j}": np.float64 for j in range(n_fields)}},
                na_filter=False, engine="c",
            )  # fmt: skip
        except (ValueError, OverflowError):
            pass
        else:
            if len(frame) == n:
                index = frame[[f"i{j}" for j in range(n_fields)]].to_numpy()
                value = frame[[f"v{j}" for j in range(n_fields)]].to_numpy()
                return frame["label"].to_numpy(dtype=object), index.astype(str), (index >= 0) & (value == 1)
    labels = np.empty(n, dtype=object)
    index = np.empty((n, n_fields), dtype=object)
    one_hot = np.zeros((n, n_fields), dtype=bool)
    for r, s in enumerate(lines):
        tokens = s.split(" ")
        labels[r] = tokens[0]
        for j, pair in enumerate(tokens[1:]):
            idx, colon, value = pair.partition(":")
            digits = idx.isascii() and idx.isdigit()
            index[r, j] = str(int(idx)) if digits else idx  # as the fast path writes it
            one_hot[r, j] = bool(colon) and digits and _is_one(value)
    return labels, index, one_hot


def _is_one(text: str) -> bool:
    try:
        return float(text) == 1.0
    except ValueError:
        return False


def _find(folder: Path, sf: SchemaFile, role: str) -> Path | None:
    for name in sf.files.get(role, ()):
        if (folder / name).is_file():
            return folder / name
    return None
