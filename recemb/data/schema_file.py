"""Schema files: one small YAML file per dataset (in the top-level `data/` folder) saying
which reader reads it, how its lines are laid out, what each column is, the label rule and
the reading defaults. `--data NAME:PATH` reads `data/NAME.yaml`; `--data csv:PATH?schema=S`
reads any delimited file with the schema file S (a name in `data/` or a path).

    name: avazu                     # optional, the file's stem by default
    reader: csv                     # csv | libfm | movielens_100k | movielens_1m | criteo
    sep: ","                        # or a list of candidates, the first found in line 1 wins
    header: true                    # true | false | auto (line 1 starts with the first column's name)
    encoding: utf-8
    files: {test: frappe.test.libfm}  # readers of folders: role -> file name (or candidates)
    label: {column: click, values: {"0": 0, "1": 1}}   # or {column: rating, threshold: 4}
    defaults: {min_count: 2, numeric: log1p}
    columns:                        # in file order (readers of several files: any order)
      - {name: id, type: ignore}
      - {name: click, type: label}
      - {name: hour, type: datetime, format: "%y%m%d%H", parts: {hour: hour, weekday: weekday}}
      - {name: site_id, type: categorical}          # optional: prefix: 3, min_count: 5
      - {name: genres, type: multi_hot, separator: "|", pooling: mean}
      - {name: I1, type: numeric}                   # optional: transform: standardize

Column types: `categorical` (one id per row, through a Vocabulary; `prefix: N` keeps the
first N characters), `multi_hot` (a bag of ids split at `separator`, pooled by `pooling`,
"mean" by default), `numeric` (a dense float; `transform` log1p = log(1 + max(x, 0)), none,
or standardize = (x - train mean) / train std; missing -> 0 in every case), `datetime`
(written exactly in `format`, zero padding included; each of `parts` {feature name: hour |
weekday | day | month | year} becomes a categorical feature, a missing time OOV), `label` (exactly one; the `label` rule maps it to 0/1) and
`ignore`. Defaults: `min_count` (a category seen fewer times in the training rows maps to
the OOV id 0; a column may set its own) and `numeric` (the transform of numeric columns).

The folder is `$RECEMB_SCHEMAS` when set, else `data/` beside the `recemb` package (a
source checkout; an installed package has no `data/`, so set the variable there).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from recemb.config import closest

READERS: tuple[str, ...] = ("csv", "libfm", "movielens_100k", "movielens_1m", "criteo")
COLUMN_TYPES: tuple[str, ...] = ("categorical", "multi_hot", "numeric", "datetime", "label", "ignore")
NUMERIC_TRANSFORMS: tuple[str, ...] = ("log1p", "none", "standardize")
DATETIME_PARTS: tuple[str, ...] = ("hour", "weekday", "day", "month", "year")
_TOP_KEYS = ("name", "reader", "description", "sep", "header", "encoding", "files", "label", "defaults", "columns")
_COLUMN_KEYS = ("name", "type", "separator", "pooling", "format", "parts", "prefix", "min_count", "transform")


def schema_dir() -> Path:
    """Where `NAME` schema files live: $RECEMB_SCHEMAS, else the checkout's `data/`."""
    env = os.environ.get("RECEMB_SCHEMAS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "data"


def schema_names() -> list[str]:
    """Names of the schema files in `schema_dir()` (what `--data NAME:PATH` accepts)."""
    folder = schema_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


@dataclass(frozen=True)
class Column:
    """One column of the rows a reader produces, and what it becomes."""

    name: str
    type: Literal["categorical", "multi_hot", "numeric", "datetime", "label", "ignore"]
    separator: str = "|"  # multi_hot
    pooling: Literal["sum", "mean"] = "mean"  # multi_hot
    format: str | None = None  # datetime, strftime codes
    parts: dict[str, str] = field(default_factory=dict)  # datetime: feature name -> part
    prefix: int | None = None  # categorical: keep the first `prefix` characters
    min_count: int | None = None  # categorical, multi_hot, datetime: else the default
    transform: str | None = None  # numeric: else the default


@dataclass(frozen=True)
class LabelRule:
    """label = 1 if value >= threshold (a number is required), else by `values` (others are malformed)."""

    column: str
    threshold: float | None = None
    values: dict[str, int] = field(default_factory=lambda: {"0": 0, "1": 1, "0.0": 0, "1.0": 1})

    def describe(self) -> str:
        if self.threshold is not None:
            return f"{self.column} >= {self.threshold:g}"
        return f"{self.column} in {sorted(self.values)}"


@dataclass(frozen=True)
class SchemaFile:
    """A parsed, checked schema file. `with_overrides` returns a copy with other defaults."""

    name: str
    reader: str
    columns: tuple[Column, ...]
    label: LabelRule
    sep: tuple[str, ...] = (",",)
    header: bool | Literal["auto"] = False
    encoding: str = "utf-8"
    files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    min_count: int = 1
    numeric: str = "log1p"
    path: Path | None = None
    description: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.where()}: no column {name!r}; columns: {list(self.names)}")

    def with_overrides(
        self, min_count: int | None = None, numeric: str | None = None, threshold: float | None = None
    ) -> SchemaFile:
        """The same dataset read with another default min_count, numeric transform or label threshold."""
        changes: dict[str, Any] = {}
        if min_count is not None:
            changes["min_count"] = _min_count(self.where(), "min_count", min_count)
        if numeric is not None:
            changes["numeric"] = _choice(self.where(), "numeric", numeric, NUMERIC_TRANSFORMS)
        if threshold is not None:
            if self.label.threshold is None:
                raise ValueError(
                    f"{self.where()}: threshold={threshold} given, but the label {self.label.column!r} is read "
                    f"by values {sorted(self.label.values)}, not by a threshold"
                )
            changes["label"] = dataclasses.replace(self.label, threshold=_number(self.where(), "threshold", threshold))
        return dataclasses.replace(self, **changes)

    def where(self) -> str:
        return f"schema file {self.path}" if self.path else f"schema {self.name!r}"


def find_schema_file(name_or_path: str | Path) -> SchemaFile:
    """`data/NAME.yaml` for a bare name, else the file at that path."""
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) or os.sep in text or "/" in text):
        path = schema_dir() / f"{text}.yaml"
        if not path.is_file():
            known = schema_names()
            raise FileNotFoundError(
                f"no schema file {text!r} in {schema_dir()}{closest(text, known)}; known: {known} "
                "(give a path to a .yaml file, or set RECEMB_SCHEMAS to the folder of schema files)"
            )
    return read_schema_file(path)


def read_schema_file(path: str | Path) -> SchemaFile:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no schema file at {path}")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"schema file {path} must hold a mapping, got {type(raw).__name__}")
    return parse_schema(raw, path)


def parse_schema(raw: dict[str, Any], path: Path | None = None) -> SchemaFile:
    """A SchemaFile from a loaded YAML mapping; every mistake is named with the file and key."""
    where = f"schema file {path}" if path else "schema"
    _known_keys(where, raw, _TOP_KEYS)
    name = str(raw.get("name") or (path.stem if path else "csv"))
    reader = _choice(where, "reader", raw.get("reader", "csv"), READERS)

    columns_raw = raw.get("columns")
    if reader != "criteo" and (not isinstance(columns_raw, list) or not columns_raw):
        raise ValueError(f"{where}: `columns` must be a non-empty list of {{name, type, ...}} mappings")
    columns = tuple(_column(where, i, c) for i, c in enumerate(columns_raw or []))
    names = [c.name for c in columns]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{where}: columns {dup} appear more than once; column names must be unique")
    outputs = [p for c in columns if c.type == "datetime" for p in c.parts] + [
        c.name for c in columns if c.type in ("categorical", "multi_hot", "numeric")
    ]
    clash = sorted({n for n in outputs if outputs.count(n) > 1})
    if clash:
        raise ValueError(f"{where}: features {clash} are made twice (a datetime part named like a column?)")

    labels = [c.name for c in columns if c.type == "label"]
    rule_raw = raw.get("label") or {}
    if not isinstance(rule_raw, dict):
        raise ValueError(f"{where}: `label` must be a mapping like {{column: click, values: {{'0': 0, '1': 1}}}}")
    _known_keys(f"{where}, label", rule_raw, ("column", "threshold", "values"))
    if columns and len(labels) != 1:
        raise ValueError(f"{where}: exactly one column must have type label, got {labels}")
    label_column = str(rule_raw.get("column", labels[0] if labels else "label"))
    if labels and label_column != labels[0]:
        raise ValueError(f"{where}: label.column is {label_column!r} but the column of type label is {labels[0]!r}")
    rule = LabelRule(label_column)
    if "threshold" in rule_raw and "values" in rule_raw:
        raise ValueError(f"{where}: label has both threshold and values; give one")
    if "threshold" in rule_raw:
        rule = LabelRule(label_column, threshold=_number(where, "label.threshold", rule_raw["threshold"]))
    elif "values" in rule_raw:
        values = rule_raw["values"]
        if not isinstance(values, dict) or not values or any(v not in (0, 1) for v in values.values()):
            raise ValueError(f"{where}: label.values must map raw values to 0 or 1, got {values!r}")
        rule = LabelRule(label_column, values={str(k): int(v) for k, v in values.items()})

    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ValueError(f"{where}: `defaults` must be a mapping like {{min_count: 2, numeric: log1p}}")
    _known_keys(f"{where}, defaults", defaults, ("min_count", "numeric"))

    sep = raw.get("sep", ",")
    seps = tuple(sep) if isinstance(sep, list) else (sep,)
    if not seps or any(not isinstance(s, str) or not s or s in ('"', "\n", "\r") for s in seps):
        raise ValueError(
            f"{where}: sep must be a non-empty string (or a list of them), not a quote or newline; got {sep!r}"
        )
    header = raw.get("header", False)
    if header not in (True, False, "auto"):
        raise ValueError(f"{where}: header must be true, false or auto, got {header!r}")
    encoding = str(raw.get("encoding", "utf-8"))
    try:
        "".encode(encoding)
    except LookupError:
        raise ValueError(f"{where}: unknown encoding {encoding!r}") from None
    files_raw = raw.get("files") or {}
    if not isinstance(files_raw, dict):
        raise ValueError(f"{where}: `files` must map a role to a file name or a list of candidate names")
    files = {str(k): tuple(str(x) for x in (v if isinstance(v, list) else [v])) for k, v in files_raw.items()}

    return SchemaFile(
        name=name,
        reader=reader,
        columns=columns,
        label=rule,
        sep=seps,
        header=header,
        encoding=encoding,
        files=files,
        min_count=_min_count(where, "defaults.min_count", defaults.get("min_count", 1)),
        numeric=_choice(where, "defaults.numeric", defaults.get("numeric", "log1p"), NUMERIC_TRANSFORMS),
        path=path,
        description=str(raw.get("description", "")),
    )


def _column(where: str, i: int, raw: Any) -> Column:
    if not isinstance(raw, dict) or "name" not in raw or "type" not in raw:
        raise ValueError(f"{where}: columns[{i}] must be a mapping with name and type, got {raw!r}")
    name = str(raw["name"])
    at = f"{where}, column {name!r}"
    _known_keys(at, raw, _COLUMN_KEYS)
    kind = _choice(at, "type", raw["type"], COLUMN_TYPES)
    allowed = {
        "categorical": ("prefix", "min_count"),
        "multi_hot": ("separator", "pooling", "min_count"),
        "numeric": ("transform",),
        "datetime": ("format", "parts", "min_count"),
        "label": (),
        "ignore": (),
    }[kind]
    extra = sorted(set(raw) - {"name", "type", *allowed})
    if extra:
        raise ValueError(f"{at}: {extra} do not apply to type {kind}; it takes {list(allowed)}")
    col = Column(name, kind)
    if kind == "multi_hot":
        sep = raw.get("separator", "|")
        if not isinstance(sep, str) or not sep:
            raise ValueError(f"{at}: separator must be a non-empty string, got {sep!r}")
        pooling = _choice(at, "pooling", raw.get("pooling", "mean"), ("sum", "mean"))
        col = dataclasses.replace(col, separator=sep, pooling=pooling)
    if kind == "datetime":
        fmt, parts = raw.get("format"), raw.get("parts")
        if not isinstance(fmt, str) or "%" not in fmt:
            raise ValueError(f"{at}: a datetime column needs format, strftime codes such as '%y%m%d%H'; got {fmt!r}")
        if not isinstance(parts, dict) or not parts:
            raise ValueError(
                f"{at}: a datetime column needs parts, {{feature name: part}} with parts from {list(DATETIME_PARTS)}"
            )
        col = dataclasses.replace(
            col, format=fmt, parts={str(k): _choice(at, f"parts.{k}", v, DATETIME_PARTS) for k, v in parts.items()}
        )
    if "prefix" in raw:
        if not isinstance(raw["prefix"], int) or raw["prefix"] < 1:
            raise ValueError(f"{at}: prefix must be an integer >= 1 (characters kept), got {raw['prefix']!r}")
        col = dataclasses.replace(col, prefix=raw["prefix"])
    if "min_count" in raw:
        col = dataclasses.replace(col, min_count=_min_count(at, "min_count", raw["min_count"]))
    if "transform" in raw:
        col = dataclasses.replace(col, transform=_choice(at, "transform", raw["transform"], NUMERIC_TRANSFORMS))
    return col


def _known_keys(where: str, raw: dict, known: tuple[str, ...]) -> None:
    for key in raw:
        if key not in known:
            raise ValueError(f"{where}: unknown key {key!r}{closest(str(key), known)}; keys: {list(known)}")


def _choice(where: str, key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{where}: {key} must be one of {list(allowed)}, got {value!r}{closest(str(value), allowed)}")
    return str(value)


def _min_count(where: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: {key} must be an integer >= 1, got {value!r}")
    return value


def _number(where: str, key: str, value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(value, bool) or not math.isfinite(x):
        raise ValueError(f"{where}: {key} must be a finite number, got {value!r}")
    return x
