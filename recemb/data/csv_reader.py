"""Reader of any delimited text file described by a schema file (`--data csv:PATH?schema=S`,
or `--data NAME:PATH` for a schema file `data/NAME.yaml` with `reader: csv`).

The layout comes from the schema file: the separator (or candidates, the first found in
line 1 wins: Criteo's TSV and CSV), whether line 1 is a header (`auto`: when it starts with
the first column's name), the encoding, and the columns in file order. A header must hold
exactly the column names, so a file of another layout is refused at line 1 instead of read
shifted. LF and CRLF line endings are both read; a double-quoted field may hold the
separator but not a line break.

Rows are split in file order, the positions of the data lines (header not counted)
deciding the part: by default the first 70% train, the next 10% validation, the last 20%
test, with the boundaries of `CTRData.split`. A malformed line skipped with
`on_bad_lines="skip"` leaves its part one row short; the boundaries stay where they were,
in file (time) order. The file is read twice in chunks (fit on the training lines, then
encode all), see `recemb.data.tabular`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from recemb.data.lines import (
    BadLines, LineChunk, RowChecks, count_lines, describe_sep, first_line, read_chunks, split_fields, to_frame,
)
from recemb.data.schema_file import SchemaFile, find_schema_file
from recemb.data.tabular import LoadedData, RawChunk, ReadOptions, Source, encode
from recemb.data.vocab import Vocabulary


def load_csv(
    path: str | Path,
    schema: SchemaFile | str | Path,
    options: ReadOptions = ReadOptions(),
    vocabularies: dict[str, Vocabulary] | None = None,
    dense_stats: dict[str, dict[str, float]] | None = None,
) -> LoadedData:
    """Read, check and encode a delimited file; `schema` is a SchemaFile, a name in `data/`
    or a path. Given `vocabularies` (and `dense_stats`, for standardized columns) of a saved
    run are used as they are instead of being fitted on the training rows."""
    sf = schema if isinstance(schema, SchemaFile) else find_schema_file(schema)
    return encode([csv_source(Path(path), sf, options)], sf, options, vocabularies, dense_stats)


def csv_source(path: Path, sf: SchemaFile, options: ReadOptions, split: Sequence[float] | None = None) -> Source:
    """The rows of one delimited file, split by `split` (default `options.split`)."""
    names = sf.names
    expected = f"{len(names)} fields per line ({_columns(names)})"
    line = first_line(path, sf.encoding, expected)
    sep = next((s for s in sf.sep if s in line), sf.sep[0] if len(sf.sep) == 1 else None)
    if sep is None:
        seps = [describe_sep(s) for s in sf.sep]
        raise ValueError(f"{path}, line 1: separated by none of {seps}; expected {expected}")
    header = sf.header if sf.header != "auto" else line.split(sep)[0].strip('"') == names[0]
    if header:
        fields = [f.strip('"') for f in line.split(sep)]
        if tuple(fields) != names:
            at = next((i for i, (a, b) in enumerate(zip(fields, names)) if a != b), min(len(fields), len(names)))
            raise ValueError(
                f"{path}, line 1: the header must be {sep.join(names)} (schema {sf.name!r}); got {len(fields)} names, "
                f"the first difference at column {at + 1}"
            )
    n = count_lines(path) - header
    if n < 1:
        raise ValueError(f"{path}: a header but no data rows")
    if options.max_rows is not None:
        n = min(n, options.max_rows)
    bounds = Source.split_bounds(n, options.split if split is None else split)

    def chunks(stop: int, bad: BadLines) -> Iterator[RawChunk]:
        for lc in read_chunks(path, sf.encoding, options.chunksize, skip=int(header), limit=stop):
            yield delimited_chunk(lc, path, sep, names, sf.encoding, bad, first_row_line=1 + int(header))

    return Source(path, bounds, chunks)


def delimited_chunk(
    lc: LineChunk, path: Path, sep: str, names: Sequence[str], encoding: str, bad: BadLines, first_row_line: int
) -> RawChunk:
    """Lines with len(names) fields as a frame of strings; the others are malformed.
    `first_row_line` is the file line of position 0 (2 after a header)."""
    split, counts = split_fields(lc.text, sep)
    checks = RowChecks(len(lc.text))
    checks.fail(lc.undecodable, lambda i: f"not {encoding} text")
    checks.fail(
        ~lc.undecodable & (counts != len(names)),
        lambda i: "unbalanced double quotes" if counts[i] < 0 else (
            f"{counts[i]} fields, expected {len(names)} ({describe_sep(sep)}-separated {_columns(names)})"
        ),
    )  # fmt: skip
    numbers = lc.line_numbers
    keep = checks.report(bad, path, numbers)
    frame = to_frame(lc.text, split, keep, sep, names)
    return RawChunk(frame, numbers[keep] - first_row_line, numbers[keep], len(lc.text))


def _columns(names: Sequence[str]) -> str:
    return ", ".join(names) if len(names) <= 6 else f"{', '.join(names[:3])}, ..., {names[-1]}"


__all__ = ["csv_source", "delimited_chunk", "load_csv"]
