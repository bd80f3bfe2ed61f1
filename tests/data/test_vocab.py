"""Vocabulary: OOV id 0 for missing, rare and unseen values; ids by frequency; round trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from recemb.data.vocab import Vocabulary

TRAIN = ["a", "b", "a", "c", "", "c", "a", None, np.nan, "d", "e", "e"]


def test_min_count_keeps_frequent_values_by_decreasing_count() -> None:
    v = Vocabulary.fit(TRAIN, min_count=2)
    # a x3, then c and e x2 (tie broken by value); b and d once -> OOV
    assert v.tokens == ["a", "c", "e"]
    assert v.size == 4 == len(v)
    # counts per id: OOV collects the rare values (b, d) and the 3 missing ones
    assert v.counts.tolist() == [5, 3, 2, 2]
    assert int(v.counts.sum()) == len(TRAIN)


def test_transform_maps_missing_rare_and_unseen_to_oov() -> None:
    v = Vocabulary.fit(TRAIN, min_count=2)
    ids = v.transform(["a", "c", "e", "b", "never seen", "", None, np.nan])
    assert ids.dtype == np.int64
    assert ids.tolist() == [1, 2, 3, 0, 0, 0, 0, 0]
    assert Vocabulary.OOV == 0


def test_min_count_one_keeps_every_non_missing_value() -> None:
    v = Vocabulary.fit(TRAIN)
    assert sorted(v.tokens) == ["a", "b", "c", "d", "e"]
    assert v.counts[0] == 3  # only the missing ones
    assert v.transform(["b", "d"]).tolist() == [v.tokens.index("b") + 1, v.tokens.index("d") + 1]


def test_pandas_string_series_and_lists_transform_alike() -> None:
    v = Vocabulary.fit(pd.Series(TRAIN, dtype="str"), min_count=2)
    assert v == Vocabulary.fit(TRAIN, min_count=2)
    values = ["e", "a", "zz", None]
    assert v.transform(pd.Series(values, dtype="str")).tolist() == v.transform(values).tolist() == [3, 1, 0, 0]


def test_integer_tokens() -> None:
    v = Vocabulary.fit(np.array([5, 5, 5, -1, -1, 0, 0, 7]), min_count=2)
    assert v.tokens == [5, -1, 0]  # -1 before 0 on the tie
    assert v.transform(np.array([0, 7, 5, -1, 123])).tolist() == [3, 0, 1, 2, 0]


def test_round_trip_through_json() -> None:
    for train in (TRAIN, np.array([3, 3, 1, 2, 2, 2])):
        v = Vocabulary.fit(train, min_count=2)
        back = Vocabulary.from_dict(json.loads(json.dumps(v.to_dict())))
        assert back == v
        assert back.transform(train).tolist() == v.transform(train).tolist()


def test_counts_from_chunks_equal_fit_on_everything() -> None:
    rng = np.random.default_rng(0)
    values = pd.Series(rng.zipf(1.5, size=5_000) % 300).astype(str)
    chunks = [values[i : i + 1_234] for i in range(0, len(values), 1_234)]
    counts = chunks[0].value_counts()
    for c in chunks[1:]:
        counts = counts.add(c.value_counts(), fill_value=0)
    assert Vocabulary.from_counts(counts, min_count=3) == Vocabulary.fit(values, min_count=3)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="min_count must be >= 1, got 0"):
        Vocabulary.fit(TRAIN, min_count=0)
    with pytest.raises(ValueError, match="unique"):
        Vocabulary(["a", "a"], [0, 1, 1], 1)
    with pytest.raises(ValueError, match="one entry per id"):
        Vocabulary(["a"], [1], 1)
