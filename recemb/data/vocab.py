"""Vocabulary of a categorical column: raw values -> dense ids, fitted on training data only.

Id 0 is reserved for out-of-vocabulary values: missing ones (None, NaN, the empty string),
values seen fewer than `min_count` times in the training data, and values never seen there.
Kept values get ids 1..size-1 by decreasing training count (ties by value), so frequent
values have small ids, which frequency-aware tables (mixed dimension by frequency) can use
without a second pass. `size` is the cardinality a FeatureSpec needs: kept values + 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import pandas as pd


class Vocabulary:
    """Fitted value -> id mapping of one column. Build it with `fit` or `from_counts`."""

    OOV: ClassVar[int] = 0

    def __init__(self, tokens: Iterable[Any], counts: Iterable[int], min_count: int) -> None:
        """tokens in id order (token i has id i + 1); counts [size]: training occurrences per
        id, counts[0] being those mapped to OOV (rare or missing)."""
        if min_count < 1:
            raise ValueError(f"Vocabulary.min_count must be >= 1, got {min_count}")
        self.min_count = int(min_count)
        self._index = pd.Index(list(tokens))
        if not self._index.is_unique:
            raise ValueError("Vocabulary tokens must be unique")
        self.counts = np.asarray(list(counts), dtype=np.int64)  # [size]
        if self.counts.shape != (len(self._index) + 1,):
            raise ValueError(
                f"Vocabulary.counts must have one entry per id (OOV first): {len(self._index) + 1}, "
                f"got {self.counts.shape[0]}"
            )

    @classmethod
    def fit(cls, values: Iterable[Any] | pd.Series | np.ndarray, min_count: int = 1) -> Vocabulary:
        """Count the values and keep those seen at least `min_count` times."""
        return cls.from_counts(pd.Series(values).value_counts(dropna=False), min_count)

    @classmethod
    def from_counts(cls, counts: pd.Series, min_count: int = 1) -> Vocabulary:
        """From value -> count (e.g. value_counts summed over chunks of a file too big to hold)."""
        if min_count < 1:
            raise ValueError(f"Vocabulary.min_count must be >= 1, got {min_count}")
        counts = counts.astype(np.int64)
        missing = _is_missing(counts.index)
        kept = counts[~missing & (counts.to_numpy() >= min_count)]
        # decreasing count, ties by value: deterministic whatever order the counts came in
        kept = kept.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
        oov = int(counts.sum() - kept.sum())
        return cls(kept.index, [oov, *kept.to_numpy().tolist()], min_count)

    @property
    def size(self) -> int:
        """Number of ids including OOV: the feature's cardinality."""
        return len(self._index) + 1

    def __len__(self) -> int:
        return self.size

    @property
    def tokens(self) -> list[Any]:
        """Kept values in id order (id 1 first)."""
        return self._index.tolist()

    def transform(self, values: Iterable[Any] | pd.Series | np.ndarray) -> np.ndarray:
        """Ids [len(values)] int64; missing, rare and unseen values -> OOV (0)."""
        values = pd.Series(values) if not isinstance(values, pd.Series) else values
        ids = self._index.get_indexer(values.to_numpy()) + 1  # not found: -1 -> 0
        ids[_is_missing(values)] = self.OOV  # "" is never a token, but NaN could match NaN
        return ids.astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (tokens must be str or int) to save with a run."""
        return {"min_count": self.min_count, "tokens": self.tokens, "counts": self.counts.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vocabulary:
        return cls(d["tokens"], d["counts"], d["min_count"])

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Vocabulary)
            and self.min_count == other.min_count
            and self.tokens == other.tokens
            and np.array_equal(self.counts, other.counts)
        )

    def __repr__(self) -> str:
        return f"Vocabulary(size={self.size}, min_count={self.min_count})"


def _is_missing(values: pd.Index | pd.Series) -> np.ndarray:
    """None, NaN and the empty string: the readers' 'no value'."""
    s = values if isinstance(values, pd.Series) else pd.Series(values)
    missing = s.isna().to_numpy().copy()
    if not pd.api.types.is_numeric_dtype(s.dtype):
        missing |= (s == "").to_numpy(dtype=bool, na_value=False)
    return missing
