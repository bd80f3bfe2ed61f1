"""Datasets: readers, the synthetic generator, and `load_dataset("name:...")`.

A file dataset is named `NAME:PATH[?key=value,...]`: NAME is a schema file `data/NAME.yaml`
(fields, types, label rule, defaults), whose `reader` reads PATH; `csv:PATH?schema=S` reads
any delimited file with the schema file S (a name in `data/` or a path). Options, in the
query or as keywords of `load_dataset` (keywords win):

    on_bad_lines=error|skip  (or skip_bad_lines=1)   malformed lines: raise, or skip and count
    max_rows=N   chunksize=N   progress=1            see ReadOptions
    min_count=N   numeric=log1p|none|standardize   threshold=X   override the schema file's defaults
    schema=S                                         csv only

Criteo: `criteo:PATH` is read by recemb.data.criteo (numeric=log1p, its default, or
numeric=bucket) with min_count from data/criteo.yaml; what that reader lacks
(on_bad_lines=skip, numeric=none|standardize) sends it to the generic CSV reader with the
columns of data/criteo.yaml, which reads the same rows into the same ids and values.

Behaviour sequences: `amazon:PATH` (recemb.data.amazon; options max_len, negatives,
neg_seed, min_history) and `alimama:PATH` (recemb.data.alimama; max_len, min_count) build
their histories themselves, so they have no schema file (a schema file's columns have no
sequence type); the read options above apply. Their DataSplits carry `groups`, the user of
each row, and a run then reports GAUC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recemb.config import closest, from_mapping, parse_settings
from recemb.data.batch import Batch, CTRData, Jagged, kjt_from_ids

DATASETS: dict[str, str] = {
    "synthetic": "synthetic[:rows=N,seed=S,...]: the generator with a known Bayes AUC",
    "criteo": "criteo:PATH: Criteo Kaggle train.txt (TSV) or DeepCTR's CSV sample (data/criteo.yaml)",
    "avazu": "avazu:PATH: Avazu Kaggle train.csv or a sample of it (data/avazu.yaml)",
    "frappe": "frappe:PATH: a Frappe libFM file or their folder (data/frappe.yaml)",
    "movielens_100k": "movielens_100k:PATH: the ml-100k folder (data/movielens_100k.yaml)",
    "movielens_1m": "movielens_1m:PATH: the ml-1m folder or its ratings file (data/movielens_1m.yaml)",
    "csv": "csv:PATH?schema=S: any delimited file a schema file S describes",
    "amazon": "amazon:PATH[?max_len=50,negatives=2,...]: user->item sequences, SASRec layout (recemb.data.amazon)",
    "alimama": "alimama:PATH[?max_len=50]: Taobao ad clicks with behaviours, DMR format (recemb.data.alimama)",
}
_READ_OPTIONS = ("on_bad_lines", "max_rows", "chunksize", "progress")
_OVERRIDES = ("min_count", "numeric", "threshold")
_OPTIONS = (*_READ_OPTIONS, *_OVERRIDES, "skip_bad_lines", "schema")
# readers of behaviour sequences (no schema file): their own options besides the read options
_SEQUENCE_OPTIONS: dict[str, tuple[str, ...]] = {
    "amazon": ("max_len", "negatives", "neg_seed", "min_history"),
    "alimama": ("max_len", "min_count"),
}


@dataclass
class DataSplits:
    """Train / validation / test parts, what a run must keep to read data the same way
    again (vocabularies, statistics of standardized columns), and the reading report."""

    train: CTRData
    valid: CTRData
    test: CTRData
    vocabularies: dict[str, Any] = field(default_factory=dict)  # name -> Vocabulary.to_dict()
    dense_stats: dict[str, dict[str, float]] = field(default_factory=dict)  # column -> {"mean", "std"}
    report: dict[str, int] = field(default_factory=dict)  # rows (kept), skipped_lines (malformed)
    groups: dict[str, Any] = field(default_factory=dict)  # part -> [N] user of each row (GAUC), if known


def load_dataset(
    spec: str,
    split: tuple[float, ...] = (0.7, 0.1, 0.2),
    *,
    schema: str | Path | None = None,
    vocabularies: dict[str, Any] | None = None,
    dense_stats: dict[str, dict[str, float]] | None = None,
    **options: Any,
) -> DataSplits:
    """`synthetic`, `synthetic:rows=50000,seed=1`, `NAME:PATH[?options]` or `csv:PATH?schema=S`.
    File datasets are split in file order (MovieLens: in time order; Frappe folders: by
    file); the metrics a run reports are the test part's. `vocabularies` (name -> Vocabulary
    or its to_dict(), as in a run's vocab.json) and `dense_stats` of a saved run are used
    instead of fitting them on the training rows."""
    if len(split) != 3:
        raise ValueError(f"split must be 3 fractions (train, valid, test), got {list(split)}")
    name, _, rest = spec.partition(":")
    if name == "synthetic":
        from recemb.data.synthetic import SyntheticConfig, generate

        train, valid, test = generate(from_mapping(SyntheticConfig, parse_settings(rest))).split(split)
        return DataSplits(train, valid, test, report={"rows": len(train) + len(valid) + len(test), "skipped_lines": 0})

    if name in _SEQUENCE_OPTIONS:
        return _sequence_dataset(name, rest, split, schema, vocabularies, options)

    from recemb.data.schema_file import find_schema_file, schema_names

    path, _, query = rest.partition("?")
    opts: dict[str, Any] = {**parse_settings(query.replace("&", ",")), **options}
    if schema is not None:
        opts["schema"] = schema
    for key in opts:
        if key not in _OPTIONS:
            hint = " (split is the split argument)" if key == "split" else closest(key, _OPTIONS)
            raise ValueError(f"unknown data option {key!r}{hint}; options: {list(_OPTIONS)}")
    known = sorted({*DATASETS, *schema_names()})
    if name != "csv" and name not in known:
        raise ValueError(f"unknown dataset {name!r}{closest(name, known)}; known: {known}")
    if not path:
        raise ValueError(f"{name} data needs a path: --data {name}:PATH")
    if name == "csv":
        if "schema" not in opts:
            raise ValueError("csv data needs a schema file: --data csv:PATH?schema=NAME_OR_PATH")
        sf = find_schema_file(opts.pop("schema"))
    elif "schema" in opts:
        raise ValueError(f"schema= is for csv:PATH; {name}:PATH reads the schema file data/{name}.yaml")
    else:
        sf = find_schema_file(name)

    if _truthy(opts.pop("skip_bad_lines", False)):
        opts["on_bad_lines"] = "skip"
    from recemb.data.tabular import ReadOptions
    from recemb.data.vocab import Vocabulary

    read = from_mapping(ReadOptions, {"split": tuple(split), **{k: opts[k] for k in _READ_OPTIONS if k in opts}})
    overrides = {k: opts[k] for k in _OVERRIDES if k in opts}
    vocab = None if vocabularies is None else {
        k: v if isinstance(v, Vocabulary) else Vocabulary.from_dict(v) for k, v in vocabularies.items()
    }  # fmt: skip

    reader = "csv" if name == "csv" else sf.reader
    if reader == "criteo":
        numeric = overrides.get("numeric", "log1p")
        if read.on_bad_lines == "error" and numeric in ("log1p", "bucket"):
            min_count = sf.with_overrides(**_typed({k: v for k, v in overrides.items() if k != "numeric"})).min_count
            return _criteo(path, read, min_count, "log" if numeric == "log1p" else "bucket", vocab)
        if numeric == "bucket":
            raise ValueError("numeric=bucket is read by the Criteo reader only, which has no on_bad_lines=skip")
        reader = "csv"
    sf = sf.with_overrides(**_typed(overrides))
    loaded = _READERS[reader]()(path, sf, read, vocab, dense_stats)
    return DataSplits(
        loaded.train,
        loaded.valid,
        loaded.test,
        {k: v.to_dict() for k, v in loaded.vocabularies.items()},
        loaded.dense_stats,
        loaded.report,
    )


def _sequence_dataset(
    name: str, rest: str, split: tuple[float, ...], schema: Any, vocabularies: dict[str, Any] | None, options: dict
) -> DataSplits:
    """amazon:PATH / alimama:PATH: readers that build histories themselves (no schema file)."""
    from recemb.data.tabular import ReadOptions

    path, _, query = rest.partition("?")
    opts: dict[str, Any] = {**parse_settings(query.replace("&", ",")), **options}
    allowed = (*_READ_OPTIONS, "skip_bad_lines", *_SEQUENCE_OPTIONS[name])
    for key in opts:
        if key not in allowed:
            hint = " (split is the split argument)" if key == "split" else closest(key, allowed)
            raise ValueError(f"unknown data option {key!r}{hint} for {name}; options: {list(allowed)}")
    if schema is not None:
        raise ValueError(f"schema= is for csv:PATH; {name}:PATH knows its own columns")
    if not path:
        raise ValueError(f"{name} data needs a path: --data {name}:PATH")
    if _truthy(opts.pop("skip_bad_lines", False)):
        opts["on_bad_lines"] = "skip"
    read = from_mapping(ReadOptions, {"split": tuple(split), **{k: opts.pop(k) for k in _READ_OPTIONS if k in opts}})
    if name == "amazon":
        from recemb.data.amazon import SequenceOptions, load_amazon

        if vocabularies:
            raise ValueError("amazon ids are the file's integers: it takes no vocabularies")
        return load_amazon(path, from_mapping(SequenceOptions, opts), read)
    from recemb.data.alimama import AlimamaOptions, load_alimama

    return load_alimama(path, from_mapping(AlimamaOptions, opts), read, vocabularies)


def _criteo(path: str, read: Any, min_count: int, numeric: Any, vocabularies: Any) -> DataSplits:
    from recemb.data.criteo import load_criteo

    loaded = load_criteo(path, read.split, min_count, numeric, read.max_rows, read.chunksize, vocabularies)
    rows = len(loaded.train) + len(loaded.valid) + len(loaded.test)
    vocab = {k: v.to_dict() for k, v in loaded.vocabularies.items()}
    return DataSplits(loaded.train, loaded.valid, loaded.test, vocab, {}, {"rows": rows, "skipped_lines": 0})


def _load_csv() -> Any:
    from recemb.data.csv_reader import load_csv

    return load_csv


def _load_frappe() -> Any:
    from recemb.data.frappe import load_frappe

    return load_frappe


def _load_movielens() -> Any:
    from recemb.data.movielens import load_movielens

    return load_movielens


# a schema file's `reader` -> its loader (imported when used: readers pull in pandas)
_READERS = {
    "csv": _load_csv,
    "libfm": _load_frappe,
    "movielens_100k": _load_movielens,
    "movielens_1m": _load_movielens,
}


def _typed(overrides: dict[str, Any]) -> dict[str, Any]:
    """Query strings -> the types SchemaFile.with_overrides takes."""
    out = dict(overrides)
    for key, kind in (("min_count", int), ("threshold", float)):
        if key in out and isinstance(out[key], str):
            try:
                out[key] = kind(out[key])
            except ValueError:
                raise ValueError(f"data option {key} must be {kind.__name__}, got {out[key]!r}") from None
    return out


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"data option skip_bad_lines must be 1/0/true/false, got {value!r}")
        return value.lower() in ("1", "true", "yes")
    return bool(value)


__all__ = ["DATASETS", "Batch", "CTRData", "DataSplits", "Jagged", "kjt_from_ids", "load_dataset"]
