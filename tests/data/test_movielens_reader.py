"""The MovieLens readers (schemas data/movielens_100k.yaml, data/movielens_1m.yaml) on the
real files in ../shared/data: rows, the rating-threshold label, time order, user attributes,
multi-hot genres of known movies, vocabularies fitted on train, malformed lines."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from recemb.data import load_dataset
from recemb.data.movielens import load_movielens

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ML100K, ML1M = SHARED / "movielens_100k", SHARED / "movielens_1m_sample"
pytestmark = pytest.mark.skipif(
    not (ML100K / "u.data").is_file() or not (ML1M / "users.dat").is_file(),
    reason=f"the MovieLens files are not in {SHARED}",
)
FEATURES = ("user_id", "item_id", "gender", "age", "occupation", "zip", "genres")


@functools.cache
def _ratings(path: Path, sep: str) -> list[tuple[int, int, int, int]]:
    """An independent parse: (user, item, rating, timestamp) in file order."""
    with path.open() as f:
        return [tuple(int(x) for x in line.rstrip("\n").split(sep)) for line in f]  # type: ignore[misc]


def _in_time_order(rows: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    return sorted(rows, key=lambda r: r[3])  # sorted() is stable: ties keep file order


def _bags(data, part: str, movie: int) -> list[list[str]]:
    """The genre names of every row of `part` that rates `movie`."""
    d = getattr(data, part)
    item = data.vocabularies["item_id"].transform([str(movie)])[0]
    rows = torch.nonzero(d.single[:, FEATURES.index("item_id")] == item).flatten()
    bags = d.jagged["genres"].take(rows)
    tokens = data.vocabularies["genres"].tokens
    return [[tokens[int(i) - 1] for i in bags.values[a:b]] for a, b in zip(bags.offsets[:-1], bags.offsets[1:])]


@pytest.fixture(scope="module")
def ml100k():
    return load_movielens(ML100K, "movielens_100k")


@pytest.fixture(scope="module")
def ml1m():
    return load_dataset(f"movielens_1m:{ML1M}")


def test_100k_rows_label_and_time_order(ml100k) -> None:
    raw = _ratings(ML100K / "u.data", "\t")
    assert len(raw) == 100_000
    assert (len(ml100k.train), len(ml100k.valid), len(ml100k.test)) == (70_000, 10_000, 20_000)
    labels = torch.cat([ml100k.train.labels, ml100k.valid.labels, ml100k.test.labels])
    assert int(labels.sum()) == sum(r[2] >= 4 for r in raw) == 55_375  # 55.37 %, as PROVENANCE.md says
    ordered = _in_time_order(raw)
    assert labels.tolist() == [float(r[2] >= 4) for r in ordered]
    users = ml100k.vocabularies["user_id"].transform([str(r[0]) for r in ordered[:70_000]])
    assert ml100k.train.single[:, 0].tolist() == users.tolist()
    assert ml100k.report == {"rows": 100_000, "skipped_lines": 0}


def test_100k_features_kinds_and_user_attributes(ml100k) -> None:
    schema = ml100k.schema
    assert schema.names == FEATURES and schema.dense == () and schema.label == "rating"
    genres = schema.feature("genres")
    assert (genres.kind, genres.pooling) == ("multi_hot", "mean")
    assert all(schema.feature(n).kind == "single" for n in FEATURES[:-1])
    assert sorted(ml100k.vocabularies["gender"].tokens) == ["F", "M"]
    assert all(len(z) <= 3 for z in ml100k.vocabularies["zip"].tokens)  # prefix 3
    with (ML100K / "u.user").open() as f:
        users = {int(line.split("|")[0]): line.rstrip("\n").split("|") for line in f}
    first = _in_time_order(_ratings(ML100K / "u.data", "\t"))[0]
    age, occupation, zip_ = users[first[0]][1], users[first[0]][3], users[first[0]][4][:3]
    row = ml100k.train.single[0].tolist()
    assert row[3] == ml100k.vocabularies["age"].transform([age])[0]
    assert row[4] == ml100k.vocabularies["occupation"].transform([occupation])[0]
    assert row[5] == ml100k.vocabularies["zip"].transform([zip_])[0]


def test_100k_genres_of_known_movies(ml100k) -> None:
    assert set(map(tuple, _bags(ml100k, "train", 1))) == {("Animation", "Children's", "Comedy")}  # Toy Story
    assert set(map(tuple, _bags(ml100k, "train", 2))) == {("Action", "Adventure", "Thriller")}  # GoldenEye
    assert set(map(tuple, _bags(ml100k, "train", 3))) == {("Thriller",)}  # Four Rooms
    lengths = ml100k.train.jagged["genres"].lengths
    assert int(lengths.min()) >= 1 and int(lengths.max()) <= 6
    assert int(ml100k.vocabularies["genres"].counts.sum()) == int(lengths.sum())  # fitted on train only


def test_vocabularies_are_fitted_on_the_training_rows_only(ml100k) -> None:
    ordered = _in_time_order(_ratings(ML100K / "u.data", "\t"))
    train_items = {r[1] for r in ordered[:70_000]}
    assert ml100k.vocabularies["item_id"].size == len(train_items) + 1  # min_count 1, + OOV
    assert int(ml100k.vocabularies["user_id"].counts.sum()) == 70_000
    unseen = [i for i, r in enumerate(ordered[80_000:]) if r[1] not in train_items]
    assert unseen and (ml100k.test.single[unseen, 1] == 0).all()


def test_threshold_from_the_schema_file_can_be_overridden() -> None:
    strict = load_dataset(f"movielens_100k:{ML100K}?threshold=5", max_rows=5_000)
    raw = _in_time_order(_ratings(ML100K / "u.data", "\t")[:5_000])
    labels = torch.cat([strict.train.labels, strict.valid.labels, strict.test.labels])
    assert labels.tolist() == [float(r[2] >= 5) for r in raw]


def test_1m_sample_rows_label_genres_and_codes(ml1m) -> None:
    raw = _ratings(ML1M / "ratings_sample_100k.dat", "::")
    assert (len(ml1m.train), len(ml1m.valid), len(ml1m.test)) == (70_000, 10_000, 20_000)
    labels = torch.cat([ml1m.train.labels, ml1m.valid.labels, ml1m.test.labels])
    assert int(labels.sum()) == sum(r[2] >= 4 for r in raw) == 57_483  # 57.48 %
    assert labels.tolist() == [float(r[2] >= 4) for r in _in_time_order(raw)]
    assert ml1m.train.schema.names == FEATURES
    assert sorted(ml1m.vocabularies["age"]["tokens"]) == sorted(["1", "18", "25", "35", "45", "50", "56"])
    genre_tokens = ml1m.vocabularies["genres"]["tokens"]
    assert len(genre_tokens) == 18 and "Children's" in genre_tokens
    train = ml1m.train
    toy_story = 1 + ml1m.vocabularies["item_id"]["tokens"].index("1")
    rows = torch.nonzero(train.single[:, 1] == toy_story).flatten()
    assert rows.numel() > 0
    bags = train.jagged["genres"].take(rows)
    assert (bags.lengths == 3).all()
    names = {genre_tokens[int(i) - 1] for i in bags.values}
    assert names == {"Animation", "Children's", "Comedy"}


# -- malformed input -------------------------------------------------------------------------


@pytest.fixture
def ml1m_copy(tmp_path: Path) -> Path:
    """users.dat and movies.dat as they are, and the first 40 ratings."""
    for name in ("users.dat", "movies.dat"):
        shutil.copy(ML1M / name, tmp_path / name)
    with (ML1M / "ratings_sample_100k.dat").open() as f:
        (tmp_path / "ratings.dat").write_text("".join(next(f) for _ in range(40)))
    return tmp_path


def _edit(path: Path, line: int, text: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[line - 1] = text + "\n"
    path.write_text("".join(lines))


def test_malformed_ratings_and_side_tables_name_file_and_line(ml1m_copy: Path) -> None:
    ratings = ml1m_copy / "ratings.dat"
    original = ratings.read_text()
    _edit(ratings, 7, "5488::488::3")
    with pytest.raises(ValueError, match=r"ratings\.dat, line 7: 3 fields, expected 4"):
        load_dataset(f"movielens_1m:{ml1m_copy}")
    ratings.write_text(original)
    _edit(ratings, 12, "999999::488::3::959821507")
    with pytest.raises(ValueError, match=r"ratings\.dat, line 12: user 999999 is not in users\.dat"):
        load_dataset(f"movielens_1m:{ml1m_copy}")
    ratings.write_text(original)
    _edit(ratings, 3, "5488::488::great::959821507")
    with pytest.raises(ValueError, match=r"ratings\.dat, line 3: rating is 'great', not a number"):
        load_dataset(f"movielens_1m:{ratings}")  # the ratings file itself, side tables beside it
    ratings.write_text(original)
    _edit(ml1m_copy / "users.dat", 5, "5::M::25")
    with pytest.raises(ValueError, match=r"users\.dat, line 5: 3 fields, expected 5"):
        load_dataset(f"movielens_1m:{ml1m_copy}")
    shutil.copy(ML1M / "users.dat", ml1m_copy / "users.dat")
    ratings.write_text("")
    with pytest.raises(ValueError, match=r"ratings\.dat: the file is empty"):
        load_dataset(f"movielens_1m:{ml1m_copy}")


def test_skip_mode_counts_malformed_lines(ml1m_copy: Path) -> None:
    raw = _ratings(ML1M / "ratings_sample_100k.dat", "::")[:40]
    ratings = ml1m_copy / "ratings.dat"
    _edit(ratings, 2, "abc::1::4::1")
    _edit(ratings, 20, "1::1::4")
    dropped_user = raw[30][0]
    lines = (ml1m_copy / "users.dat").read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith(f"{dropped_user}::"))
    lines[at] = f"{dropped_user}::M\n"  # the user's line is malformed: its ratings go too
    (ml1m_copy / "users.dat").write_text("".join(lines))
    data = load_dataset(f"movielens_1m:{ml1m_copy}", skip_bad_lines=True)
    gone = {1, 19} | {i for i, r in enumerate(raw) if r[0] == dropped_user}
    assert data.report == {"rows": 40 - len(gone), "skipped_lines": 1 + len(gone)}
    kept = _in_time_order([r for i, r in enumerate(raw) if i not in gone])
    labels = torch.cat([data.train.labels, data.valid.labels, data.test.labels])
    assert labels.tolist() == [float(r[2] >= 4) for r in kept]
    assert np.isin(str(dropped_user), data.vocabularies["user_id"]["tokens"]).sum() == 0
