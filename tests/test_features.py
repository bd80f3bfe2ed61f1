"""FeatureSpec and Schema: validation messages, grouping into tables, dict round trip."""

from __future__ import annotations

import json

import pytest

from recemb.features import KINDS_OF_FEATURE, FeatureSpec, Schema


def make_schema() -> Schema:
    return Schema(
        (
            FeatureSpec("user", 100),
            FeatureSpec("item", 500),
            FeatureSpec("tags", 30, "multi_hot", pooling="mean"),
            FeatureSpec("hist", 500, "sequence", max_len=20, table="item"),
            FeatureSpec("cat", 12, table="category"),
            FeatureSpec("hist_cat", 12, "sequence", max_len=20, table="category"),
        ),
        dense=("age", "price"),
        label="click",
    )


def test_feature_defaults_and_properties():
    f = FeatureSpec("user", 10)
    assert (f.kind, f.pooling, f.max_len, f.table) == ("single", "sum", 0, None)
    assert f.table_name == "user" and not f.is_sequence
    s = FeatureSpec("hist", 10, "sequence", max_len=5, table="item")
    assert s.table_name == "item" and s.is_sequence
    assert KINDS_OF_FEATURE == ("single", "multi_hot", "sequence")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": ""}, r"FeatureSpec\.name must be a non-empty string"),
        ({"cardinality": 0}, r"FeatureSpec\.cardinality of feature 'f' must be >= 1, got 0"),
        ({"cardinality": -5}, r"cardinality of feature 'f' must be >= 1, got -5"),
        (
            {"kind": "dense"},
            r"FeatureSpec\.kind of feature 'f' must be one of \('single', 'multi_hot', 'sequence'\), got 'dense'",
        ),
        ({"pooling": "max"}, r"FeatureSpec\.pooling of feature 'f' must be 'sum' or 'mean', got 'max'"),
        ({"kind": "sequence"}, r"FeatureSpec\.max_len of sequence feature 'f' must be >= 1, got 0"),
        ({"kind": "sequence", "max_len": -3}, r"must be >= 1, got -3"),
        ({"max_len": 4}, r"max_len is only for sequence features; 'f' is 'single' with max_len=4"),
        ({"kind": "multi_hot", "max_len": 2}, r"'f' is 'multi_hot' with max_len=2"),
    ],
)
def test_feature_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeatureSpec(**{"name": "f", "cardinality": 10, **kwargs})


def test_feature_is_frozen():
    f = FeatureSpec("user", 10)
    with pytest.raises(AttributeError):
        f.cardinality = 20  # type: ignore[misc]


def test_schema_views():
    schema = make_schema()
    assert schema.names == ("user", "item", "tags", "hist", "cat", "hist_cat")
    assert [f.name for f in schema.pooled] == ["user", "item", "tags", "cat"]
    assert [f.name for f in schema.sequences] == ["hist", "hist_cat"]
    assert schema.feature("tags").pooling == "mean"
    assert schema.dense == ("age", "price") and schema.label == "click"


def test_schema_freezes_lists():
    schema = Schema([FeatureSpec("a", 2)], dense=["x"])
    assert isinstance(schema.sparse, tuple) and isinstance(schema.dense, tuple)
    assert hash(schema) == hash(Schema((FeatureSpec("a", 2),), dense=("x",)))


def test_schema_unknown_feature():
    with pytest.raises(KeyError, match=r"unknown feature 'usr'; the schema has \['user', 'item'"):
        make_schema().feature("usr")


def test_tables_grouping():
    tables = make_schema().tables()
    assert list(tables) == ["user", "item", "tags", "category"]  # first-use order
    assert {t: [f.name for f in fs] for t, fs in tables.items()} == {
        "user": ["user"],
        "item": ["item", "hist"],
        "tags": ["tags"],
        "category": ["cat", "hist_cat"],
    }


def test_a_feature_can_share_another_features_own_table():
    schema = Schema((FeatureSpec("b", 4, table="a"), FeatureSpec("a", 4)))
    assert {t: [f.name for f in fs] for t, fs in schema.tables().items()} == {"a": ["b", "a"]}


@pytest.mark.parametrize(
    "sparse, match",
    [
        ((), r"Schema\.sparse must hold at least one feature"),
        (
            (FeatureSpec("a", 2), FeatureSpec("b", 2), FeatureSpec("a", 3), FeatureSpec("b", 2)),
            r"duplicated feature names \['a', 'b'\]",
        ),
        (
            (FeatureSpec("item", 50), FeatureSpec("hist", 40, "sequence", max_len=3, table="item")),
            r"features \['item', 'hist'\] share table 'item' but have cardinalities \[40, 50\]",
        ),
    ],
)
def test_schema_validation(sparse, match):
    with pytest.raises(ValueError, match=match):
        Schema(sparse)


def test_dict_round_trip():
    schema = make_schema()
    d = schema.to_dict()
    assert d["dense"] == ["age", "price"] and d["label"] == "click"
    assert d["sparse"][3] == {
        "name": "hist",
        "cardinality": 500,
        "kind": "sequence",
        "pooling": "sum",
        "max_len": 20,
        "table": "item",
    }
    again = Schema.from_dict(json.loads(json.dumps(d)))  # survives a JSON file
    assert again == schema
    assert again.tables().keys() == schema.tables().keys()
    assert again.feature("hist").table_name == "item"


def test_from_dict_defaults_and_validation():
    schema = Schema.from_dict({"sparse": [{"name": "a", "cardinality": 3}]})
    assert schema.dense == () and schema.label == "label"
    with pytest.raises(ValueError, match="cardinality of feature 'a' must be >= 1, got 0"):
        Schema.from_dict({"sparse": [{"name": "a", "cardinality": 0}]})
