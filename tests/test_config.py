"""Config mapping: strings and loaded YAML/TOML values coerced onto frozen dataclasses."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import pytest

from recemb.config import closest, from_mapping, load_config_file, parse_settings, to_mapping
from recemb.storage import EmbeddingOptimizer, StoreSettings
from recemb.tables import Full, table_from_mapping


@dataclass(frozen=True)
class Inner:
    name: str = "sgd"
    lr: float = 0.1


@dataclass(frozen=True)
class Outer:
    size: int = 1
    rate: float = 0.5
    flag: bool = False
    label: str = "x"
    maybe: int | None = None
    dims: tuple[int, ...] = ()
    mode: Literal["a", "b"] = "a"
    inner: Inner = field(default_factory=Inner)


# -- ints --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [("3", 3), (" 12 ", 12), ("-4", -4), (7, 7), (4.0, 4), ("1e6", 1_000_000), ("2E3", 2000), ("1.5e3", 1500)],
)
def test_int_coercion(value, expected):
    got = from_mapping(Outer, {"size": value}).size
    assert got == expected and type(got) is int


@pytest.mark.parametrize("value", ["abc", "2.5", 2.5, "", "1e-3", "2.5e0", "1e"])
def test_int_refuses_non_integers(value):
    """Never a silent truncation: '1e-3' or '2.5e0' is no int."""
    with pytest.raises(ValueError, match=r"Outer\.size must be int, got "):
        from_mapping(Outer, {"size": value})


# -- floats, bools, strs -----------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [("0.25", 0.25), ("1e-3", 1e-3), (2, 2.0), ("-inf", float("-inf"))])
def test_float_coercion(value, expected):
    got = from_mapping(Outer, {"rate": value}).rate
    assert got == expected and type(got) is float


def test_float_refuses_text():
    with pytest.raises(ValueError, match=r"Outer\.rate must be float, got 'fast'"):
        from_mapping(Outer, {"rate": "fast"})


@pytest.mark.parametrize(
    "value, expected",
    [("true", True), ("True", True), ("1", True), ("yes", True), ("false", False), ("FALSE", False), ("0", False),
     ("no", False), (True, True), (False, False)],
)
def test_bool_coercion(value, expected):
    assert from_mapping(Outer, {"flag": value}).flag is expected


@pytest.mark.parametrize("value", ["maybe", "2", "on?"])
def test_bool_refuses_other_strings(value):
    with pytest.raises(ValueError, match=re.escape(f"Outer.flag must be bool, got '{value}'")):
        from_mapping(Outer, {"flag": value})


def test_str_coercion():
    assert from_mapping(Outer, {"label": 5}).label == "5"
    assert from_mapping(Outer, {"label": "hello"}).label == "hello"


def test_optional_tuple_and_literal():
    assert from_mapping(Outer, {"maybe": "none"}).maybe is None
    assert from_mapping(Outer, {"maybe": "None"}).maybe is None
    assert from_mapping(Outer, {"maybe": None}).maybe is None
    assert from_mapping(Outer, {"maybe": "3"}).maybe == 3
    assert from_mapping(Outer, {"maybe": "1e2"}).maybe == 100
    with pytest.raises(ValueError, match=r"Outer\.maybe must be"):
        from_mapping(Outer, {"maybe": "many"})
    assert from_mapping(Outer, {"dims": "1;2;3"}).dims == (1, 2, 3)
    assert from_mapping(Outer, {"dims": [4, "5"]}).dims == (4, 5)
    with pytest.raises(ValueError, match=r"Outer\.dims must be"):
        from_mapping(Outer, {"dims": "1;x"})
    assert from_mapping(Outer, {"mode": "b"}).mode == "b"


# -- dataclasses -------------------------------------------------------------------------


def test_nested_dataclass():
    got = from_mapping(Outer, {"size": "2", "inner": {"lr": "0.5", "name": "adagrad"}})
    assert got == Outer(size=2, inner=Inner(name="adagrad", lr=0.5))
    assert from_mapping(Outer, {}) == Outer()


def test_nested_unknown_key():
    expected = r"Inner has no setting 'lrr' \(did you mean 'lr'\?\); settings: \['lr', 'name'\]"
    with pytest.raises(ValueError, match=expected):
        from_mapping(Outer, {"inner": {"lrr": 1}})


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ValueError, match=r"Outer has no setting 'sise' \(did you mean 'size'\?\); settings: \["):
        from_mapping(Outer, {"sise": 3})
    with pytest.raises(ValueError, match=r"Outer has no setting 'zzzzzz'; settings: \['dims', 'flag'"):
        from_mapping(Outer, {"zzzzzz": 3})


def test_library_configs_from_mapping():
    got = from_mapping(StoreSettings, {"backend": "reference", "seed": "3", "optimizer": {"name": "sgd", "lr": "0.2"}})
    assert got == StoreSettings("reference", EmbeddingOptimizer("sgd", lr=0.2), seed=3)
    with pytest.raises(ValueError, match=r"EmbeddingOptimizer\.lr must be > 0, got -1\.0"):
        from_mapping(StoreSettings, {"optimizer": {"lr": "-1"}})  # the dataclass's own validation runs
    with pytest.raises(ValueError, match=r"Full has no setting 'kind'"):
        from_mapping(Full, {"kind": "full"})  # a ClassVar is not a setting


def test_to_mapping_round_trip():
    obj = Outer(size=3, flag=True, maybe=4, dims=(1, 2), mode="b", inner=Inner("x", 0.3))
    mapping = to_mapping(obj)
    assert mapping == {
        "size": 3,
        "rate": 0.5,
        "flag": True,
        "label": "x",
        "maybe": 4,
        "dims": [1, 2],
        "mode": "b",
        "inner": {"name": "x", "lr": 0.3},
    }
    assert from_mapping(Outer, mapping) == obj
    settings = StoreSettings("reference", EmbeddingOptimizer("adagrad", lr=0.01), seed=2)
    assert from_mapping(StoreSettings, to_mapping(settings)) == settings


# -- strings -----------------------------------------------------------------------------


def test_closest():
    assert closest("ful", ["full", "hashed"]) == " (did you mean 'full'?)"
    assert closest("qqq", ["full", "hashed"]) == ""
    assert closest("x", []) == ""


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", {}),
        ("a=1", {"a": "1"}),
        (" a = 1 , b=x,, ", {"a": "1", "b": "x"}),
        ("path=a=b", {"path": "a=b"}),
        ("a=", {"a": ""}),
        ("a=1,a=2", {"a": "2"}),
    ],
)
def test_parse_settings(text, expected):
    assert parse_settings(text) == expected


def test_parse_settings_refuses_items_without_equals():
    with pytest.raises(ValueError, match=r"setting 'dim' must look like key=value"):
        parse_settings("oov=row,dim")


# -- files -------------------------------------------------------------------------------

YAML = """\
table:
  kind: full
  dim: 32
  oov: row
store:
  backend: reference
  seed: 7
  optimizer:
    name: adagrad
    lr: 1e-2
steps: 1e6
"""

TOML = """\
steps = 1000000

[table]
kind = "full"
dim = 32
oov = "row"

[store]
backend = "reference"
seed = 7

[store.optimizer]
name = "adagrad"
lr = 0.01
"""


@pytest.mark.parametrize("suffix, text", [(".yaml", YAML), (".yml", YAML), (".toml", TOML)])
def test_load_config_file(tmp_path, suffix, text):
    path = tmp_path / f"run{suffix}"
    path.write_text(text)
    loaded = load_config_file(path)
    assert loaded["table"] == {"kind": "full", "dim": 32, "oov": "row"}
    assert table_from_mapping(loaded["table"]) == Full(dim=32, oov="row")
    assert from_mapping(StoreSettings, loaded["store"]) == StoreSettings(
        "reference", EmbeddingOptimizer("adagrad", lr=0.01), seed=7
    )
    assert load_config_file(str(path)) == loaded  # a str path works too


def test_load_config_file_errors(tmp_path):
    json_file = tmp_path / "run.json"
    json_file.write_text("{}")
    with pytest.raises(ValueError, match=r"run\.json.*must end in \.yaml, \.yml or \.toml"):
        load_config_file(json_file)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.yaml.*does not exist"):
        load_config_file(tmp_path / "nowhere.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match=r"must hold a mapping at the top, got list"):
        load_config_file(listing)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"got NoneType"):
        load_config_file(empty)
