"""Datasets: readers, the synthetic generator, and `load_dataset("name:...")`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recemb.config import closest, from_mapping, parse_settings
from recemb.data.batch import Batch, CTRData, Jagged, kjt_from_ids

DATASETS: tuple[str, ...] = ("synthetic", "criteo")


@dataclass
class DataSplits:
    """Train / validation / test parts, and the fitted vocabularies a run must keep."""

    train: CTRData
    valid: CTRData
    test: CTRData
    vocabularies: dict[str, Any] = field(default_factory=dict)


def load_dataset(spec: str, split: tuple[float, ...] = (0.7, 0.1, 0.2)) -> DataSplits:
    """`synthetic`, `synthetic:rows=50000,seed=1` or `criteo:PATH`; file datasets are
    split in file order (the metrics a run reports are the test part's)."""
    if len(split) != 3:
        raise ValueError(f"split must be 3 fractions (train, valid, test), got {list(split)}")
    name, _, rest = spec.partition(":")
    if name == "synthetic":
        from recemb.data.synthetic import SyntheticConfig, generate

        train, valid, test = generate(from_mapping(SyntheticConfig, parse_settings(rest))).split(split)
        return DataSplits(train, valid, test)
    if name == "criteo":
        if not rest:
            raise ValueError("criteo data needs a path: --data criteo:PATH")
        from recemb.data.criteo import load_criteo

        loaded = load_criteo(rest, split=split)
        vocabularies = {k: v.to_dict() for k, v in loaded.vocabularies.items()}
        return DataSplits(loaded.train, loaded.valid, loaded.test, vocabularies)
    raise ValueError(f"unknown dataset {name!r}{closest(name, DATASETS)}; known: {list(DATASETS)}")


__all__ = ["DATASETS", "Batch", "CTRData", "DataSplits", "Jagged", "kjt_from_ids", "load_dataset"]
