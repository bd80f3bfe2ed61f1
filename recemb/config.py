"""Config files and `key=value` strings mapped 1:1 onto frozen dataclasses."""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def closest(name: str, known: typing.Iterable[str]) -> str:
    """' (did you mean X?)' when a known name is close to `name`, else ''."""
    match = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _coerce(owner: str, field: str, annotation: Any, value: Any) -> Any:
    """Turn a string or a loaded YAML/TOML value into the field's annotated type."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if value is None or (isinstance(value, str) and value.lower() == "none" and type(None) in typing.get_args(annotation)):
        return None
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")) and args:
        annotation, origin = args[0], typing.get_origin(args[0])
    if origin is typing.Literal:
        return value
    if origin is tuple:
        items = value.split(";") if isinstance(value, str) else list(value)
        inner = typing.get_args(annotation)[0] if typing.get_args(annotation) else str
        return tuple(_coerce(owner, field, inner, v) for v in items)
    try:
        if annotation is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if annotation is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            try:
                return int(value)
            except (TypeError, ValueError):
                number = float(value)  # '1e6' is an int written as a float; '2.5' is not
                if not number.is_integer():
                    raise ValueError(value) from None
                return int(number)
        if annotation is float:
            return float(value)
        if annotation is str:
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}.{field} must be {text}, got {value!r}") from None
    return value


def from_mapping(cls: type[T], values: dict[str, Any]) -> T:
    """An instance of dataclass `cls` from a mapping; unknown keys are refused by name."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ValueError(f"{cls.__name__} has no setting {key!r}{closest(key, fields)}; settings: {sorted(fields)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            kwargs[key] = from_mapping(hint, value)
        else:
            kwargs[key] = _coerce(cls.__name__, key, hint, value)
    return cls(**kwargs)


def parse_settings(text: str) -> dict[str, str]:
    """'a=1,b=x' -> {'a': '1', 'b': 'x'}."""
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in item:
            raise ValueError(f"setting {item!r} must look like key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def to_mapping(obj: Any) -> dict[str, Any]:
    """A dataclass as plain values (for run records and config files)."""
    return json.loads(json.dumps(dataclasses.asdict(obj), default=str))


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML (.yaml/.yml) or TOML (.toml) file as a dict."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    if path.suffix == ".toml":
        with path.open("rb") as f:
            return tomllib.load(f)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        loaded = yaml.safe_load(path.read_text())
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {str(path)!r} must hold a mapping at the top, got {type(loaded).__name__}")
        return loaded
    raise ValueError(f"config file {str(path)!r} must end in .yaml, .yml or .toml")
