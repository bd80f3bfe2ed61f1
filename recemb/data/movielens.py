"""Reader of MovieLens 100K and 1M (GroupLens): ratings joined with user and movie
attributes, as CTR rows (schemas `data/movielens_100k.yaml`, `data/movielens_1m.yaml`).

Files (names from the schema file; PATH is their folder, or the ratings file itself with
the others beside it):
- 100K: `u.data` (TAB: user, item, rating, timestamp), `u.user` (`|`: user, age, gender,
  occupation, zip), `u.item` (`|`: movie, title, dates, URL, 19 genre flags) and `u.genre`
  (`|`: the names of the flags; its blank last line is ignored).
- 1M: `ratings.dat` (or `ratings_sample_100k.dat`), `users.dat` (user, gender, age code,
  occupation code, zip), `movies.dat` (movie, title, `|`-separated genres), all `::`-separated.
Files are read as latin-1 (GroupLens' encoding): every byte decodes, and the only non-ASCII
text is in titles, which are not features (a UTF-8 copy of movies.dat gives odd titles only).

The reader offers the columns user_id, item_id, rating, timestamp, gender, age, occupation,
zip, title and genres (a `|`-joined multi-hot: 100K's flags become genre names); the
schema file says what each becomes. Defaults there: the label is rating >= 4 (the usual
CTR conversion: 4 and 5 are likes; `threshold=` changes it), zip is cut to its first 3
characters (a region; full codes are nearly unique per user), age is the category as
written (100K: years; 1M: GroupLens' age groups), genres are a multi-hot feature pooled by
mean, timestamp and title are not features, min_count 1 (every user has 20 or more ratings).

Ratings are sorted by timestamp (stable: ties keep file order) and then split in that
order, 70/10/20 by default: the model is tested on ratings later than those it learned
from, as a CTR model is deployed. Vocabularies are fitted on the training rows only.

Every line is checked: the field count of each file, integer ids and timestamps, a numeric
rating, a flag other than 0/1, a user or movie listed twice, a rating whose user or movie
is not in the side tables. Each raises ValueError with file and line, or with
`on_bad_lines="skip"` is skipped and counted (a rating of a skipped user goes too).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recemb.data.csv_reader import delimited_chunk
from recemb.data.lines import BadLines, RowChecks, first_line, read_chunks
from recemb.data.schema_file import SchemaFile, find_schema_file
from recemb.data.tabular import LoadedData, RawChunk, ReadOptions, Source, encode
from recemb.data.vocab import Vocabulary

COLUMNS: tuple[str, ...] = (
    "user_id", "item_id", "rating", "timestamp", "gender", "age", "occupation", "zip", "title", "genres",
)  # fmt: skip
RATINGS = ("user_id", "item_id", "rating", "timestamp")


@dataclass(frozen=True)
class _Layout:
    sep: dict[str, str]  # role -> separator
    users: tuple[str, ...]  # fields of the users file, in file order
    items: tuple[str, ...]  # fields of the items file, in file order


_GENRE_FLAGS = 19
LAYOUTS: dict[str, _Layout] = {
    "movielens_100k": _Layout(
        {"ratings": "\t", "users": "|", "items": "|", "genres": "|"},
        ("user_id", "age", "gender", "occupation", "zip"),
        ("item_id", "title", "release_date", "video_release_date", "url", *(f"g{i}" for i in range(_GENRE_FLAGS))),
    ),
    "movielens_1m": _Layout(
        {"ratings": "::", "users": "::", "items": "::"},
        ("user_id", "gender", "age", "occupation", "zip"),
        ("item_id", "title", "genres"),
    ),
}


def load_movielens(
    path: str | Path,
    schema: SchemaFile | str | Path = "movielens_100k",
    options: ReadOptions = ReadOptions(),
    vocabularies: dict[str, Vocabulary] | None = None,
    dense_stats: dict[str, dict[str, float]] | None = None,
) -> LoadedData:
    """Read MovieLens 100K or 1M (the schema file's `reader` says which)."""
    sf = schema if isinstance(schema, SchemaFile) else find_schema_file(schema)
    if sf.reader not in LAYOUTS:
        raise ValueError(f"{sf.where()}: reader {sf.reader!r} is not a MovieLens layout {list(LAYOUTS)}")
    unknown = [c for c in sf.names if c not in COLUMNS]
    if unknown:
        raise ValueError(f"{sf.where()}: columns {unknown} are not read from MovieLens; it offers {list(COLUMNS)}")
    layout = LAYOUTS[sf.reader]
    files = _files(Path(path), sf, layout)
    bad = BadLines(options.on_bad_lines)
    genre_names = _genre_names(files["genres"], sf, bad) if "genres" in files else None
    users = _table(files["users"], layout.users, layout.sep["users"], sf, options, bad)
    items = _table(files["items"], layout.items, layout.sep["items"], sf, options, bad)
    if genre_names is not None:
        items = _flags_to_genres(items, files["items"], genre_names, bad)
    users.attrs["file"], items.attrs["file"] = files["users"].name, files["items"].name
    rows, lines = _ratings(files["ratings"], layout.sep["ratings"], sf, options, bad, users, items)
    bounds = Source.split_bounds(len(rows), options.split)

    def chunks(stop: int, _: BadLines) -> Iterator[RawChunk]:  # already checked: nothing to skip
        for start in range(0, stop, options.chunksize):
            end = min(start + options.chunksize, stop)
            yield RawChunk(rows.iloc[start:end], np.arange(start, end), lines[start:end], end - start)

    return encode([Source(files["ratings"], bounds, chunks)], sf, options, vocabularies, dense_stats, bad_lines=bad)


def _files(path: Path, sf: SchemaFile, layout: _Layout) -> dict[str, Path]:
    folder = path.parent if path.is_file() else path
    if not folder.is_dir():
        raise FileNotFoundError(f"no MovieLens folder or ratings file at {path}")
    out: dict[str, Path] = {}
    for role in layout.sep:
        names = sf.files.get(role, ())
        found = next((folder / n for n in names if (folder / n).is_file()), None)
        if role == "ratings" and path.is_file():
            found = path
        if found is None:
            raise FileNotFoundError(f"{folder} has no {role} file of schema {sf.name!r} (looked for {list(names)})")
        out[role] = found
    return out


def _table(
    path: Path, names: tuple[str, ...], sep: str, sf: SchemaFile, options: ReadOptions, bad: BadLines
) -> pd.DataFrame:
    """A side table indexed by its integer id (first field), with the line of each row."""
    first_line(path, sf.encoding, f"{len(names)} {sep!r}-separated fields ({', '.join(names[:3])}, ...)")
    parts = []
    for lc in read_chunks(path, sf.encoding, options.chunksize):
        chunk = delimited_chunk(lc, path, sep, names, sf.encoding, bad, first_row_line=1)
        frame = chunk.frame.assign(line=chunk.lines)
        parts.append(_integer_ids(frame, (names[0],), path, bad))
    table = pd.concat(parts, ignore_index=True)
    key = table[names[0]].astype(np.int64)
    again = key.duplicated().to_numpy()
    if again.any():
        first_at = dict(zip(key[~again], table["line"][~again]))
        i = int(np.flatnonzero(again)[0])
        bad.reject(
            path, table["line"].to_numpy()[again],
            f"{names[0]} {key.iloc[i]} listed again (first at line {first_at[key.iloc[i]]})",
        )  # fmt: skip
        table, key = table[~again], key[~again]
    return table.set_index(key.to_numpy())


def _integer_ids(frame: pd.DataFrame, columns: tuple[str, ...], path: Path, bad: BadLines) -> pd.DataFrame:
    """The rows whose `columns` are non-negative integers (ids, timestamps), written as int."""
    checks = RowChecks(len(frame))
    for c in columns:
        s = frame[c]
        ok = s.str.fullmatch(r"\d{1,18}").to_numpy(dtype=bool, na_value=False)
        checks.fail(~ok, lambda i, c=c, s=s: f"{c} is {s.iloc[i]!r}, not a non-negative integer")
    keep = checks.report(bad, path, frame["line"].to_numpy())
    frame = frame[keep].copy()
    for c in columns:
        frame[c] = frame[c].astype(np.int64).astype(str)  # "007" and "7" are one id
    return frame


def _genre_names(path: Path, sf: SchemaFile, bad: BadLines) -> list[str]:
    """u.genre: `name|index` lines in index order; blank lines are ignored."""
    first_line(path, sf.encoding, "genre|index lines")
    names: list[str] = []
    for lc in read_chunks(path, sf.encoding, 1 << 16):
        for line, text in zip(lc.line_numbers, lc.text):
            if not text:
                continue
            name, _, index = text.partition("|")
            if index != str(len(names)):
                raise ValueError(f"{path}, line {line}: expected `name|{len(names)}`, got {text!r}")
            names.append(name)
    if len(names) != _GENRE_FLAGS:
        raise ValueError(f"{path}: {len(names)} genres, expected {_GENRE_FLAGS} (one per flag of u.item)")
    return names


def _flags_to_genres(items: pd.DataFrame, path: Path, genre_names: list[str], bad: BadLines) -> pd.DataFrame:
    """100K's 19 genre flags -> one `|`-joined genres column (names in u.genre order)."""
    flags = items[[f"g{i}" for i in range(_GENRE_FLAGS)]]
    valid = flags.isin(["0", "1"]).to_numpy()  # [n, 19]
    checks = RowChecks(len(items))
    checks.fail(
        ~valid.all(axis=1),
        lambda i: f"genre flag {genre_names[int(np.argmin(valid[i]))]!r} is "
        f"{flags.iloc[i, int(np.argmin(valid[i]))]!r}, expected 0 or 1",
    )
    keep = checks.report(bad, path, items["line"].to_numpy())
    items = items[keep]
    on = (flags[keep] == "1").to_numpy()
    genres = ["|".join(g for g, f in zip(genre_names, row) if f) for row in on]
    return items.drop(columns=list(flags.columns)).assign(genres=genres)


def _ratings(
    path: Path, sep: str, sf: SchemaFile, options: ReadOptions, bad: BadLines, users: pd.DataFrame, items: pd.DataFrame
) -> tuple[pd.DataFrame, np.ndarray]:
    """Checked ratings joined with users and items, sorted by timestamp, and their lines."""
    first_line(path, sf.encoding, f"{sep!r}-separated user, item, rating, timestamp")
    parts = []
    for lc in read_chunks(path, sf.encoding, options.chunksize, limit=options.max_rows):
        chunk = delimited_chunk(lc, path, sep, RATINGS, sf.encoding, bad, first_row_line=1)
        frame = _integer_ids(chunk.frame.assign(line=chunk.lines), ("user_id", "item_id", "timestamp"), path, bad)
        rating = pd.to_numeric(frame["rating"], errors="coerce").to_numpy(dtype=np.float64)
        uid, iid = frame["user_id"].astype(np.int64), frame["item_id"].astype(np.int64)
        checks = RowChecks(len(frame))
        checks.fail(~np.isfinite(rating), lambda i: f"rating is {frame['rating'].iloc[i]!r}, not a number")
        checks.fail(~uid.isin(users.index).to_numpy(), lambda i: f"user {uid.iloc[i]} is not in {users.attrs['file']}")
        checks.fail(~iid.isin(items.index).to_numpy(), lambda i: f"movie {iid.iloc[i]} is not in {items.attrs['file']}")
        parts.append(frame[checks.report(bad, path, frame["line"].to_numpy())])
    ratings = pd.concat(parts, ignore_index=True)
    order = np.argsort(ratings["timestamp"].astype(np.int64).to_numpy(), kind="stable")
    ratings = ratings.iloc[order].reset_index(drop=True)
    uid, iid = ratings["user_id"].astype(np.int64).to_numpy(), ratings["item_id"].astype(np.int64).to_numpy()
    joined = pd.DataFrame(
        {
            **{c: ratings[c] for c in RATINGS},
            **{c: users[c].reindex(uid).to_numpy() for c in ("gender", "age", "occupation", "zip")},
            **{c: items[c].reindex(iid).to_numpy() for c in ("title", "genres")},
        },
        dtype=str,
    )
    return joined, ratings["line"].to_numpy(dtype=np.int64)
