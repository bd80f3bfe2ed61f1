"""The generic CSV reader and its schema files: a small temp CSV of every column type, schema
file checks, `load_dataset` names and options, and data/criteo.yaml read like load_criteo."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from recemb.data import DATASETS, load_dataset
from recemb.data.criteo import load_criteo
from recemb.data.csv_reader import load_csv
from recemb.data.schema_file import find_schema_file, parse_schema, read_schema_file, schema_names
from recemb.data.tabular import ReadOptions

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CRITEO = SHARED / "criteo"

SCHEMA = """
name: shop
reader: csv
sep: ","
header: true
label: {column: stars, threshold: 4}
defaults: {min_count: 1, numeric: log1p}
columns:
  - {name: order, type: ignore}
  - {name: stars, type: label}
  - {name: city, type: categorical, prefix: 2}
  - {name: tags, type: multi_hot, separator: ";"}
  - {name: price, type: numeric, transform: standardize}
  - {name: clicks, type: numeric}
  - {name: bonus, type: numeric, transform: none}
  - {name: day, type: datetime, format: "%Y-%m-%d", parts: {weekday: weekday, month: month}}
  - {name: note, type: categorical, min_count: 2}
"""
HEADER = "order,stars,city,tags,price,clicks,bonus,day,note"
ROWS = [
    "1,5,Paris,a;b,10,3,-1.5,2024-01-01,x",
    "2,3,Parma,b,20,,2,2024-01-02,x",
    '3,4,Lyon,,30,0,0,2024-02-03,"with, comma"',
    "4,1,Lille,a;c;a,,-2,1,,y",
    "5,4.5,Lyon,c,40,7,0,2024-03-04,x",
    "6,2,Paris,b;z,50,1,0,2024-01-06,y",
    "7,4,Oslo,a,60,2,0,2024-01-07,q",
    "8,0,Rome,z,70,1,0,2024-01-08,x",
]


@pytest.fixture
def shop(tmp_path: Path) -> tuple[Path, Path]:
    schema = tmp_path / "shop.yaml"
    schema.write_text(SCHEMA)
    data = tmp_path / "shop.csv"
    data.write_text("".join(line + "\n" for line in [HEADER, *ROWS]))
    return data, schema


def test_every_column_type_of_a_small_csv(shop: tuple[Path, Path]) -> None:
    path, schema = shop
    data = load_csv(path, schema, ReadOptions(split=(0.5, 0.25, 0.25)))
    assert (len(data.train), len(data.valid), len(data.test)) == (4, 2, 2)
    s = data.schema
    assert s.names == ("city", "tags", "weekday", "month", "note")  # order ignored; datetime parts in place
    assert s.dense == ("price", "clicks", "bonus") and s.label == "stars"
    assert (s.feature("tags").kind, s.feature("tags").pooling) == ("multi_hot", "mean")
    labels = torch.cat([data.train.labels, data.valid.labels, data.test.labels]).tolist()
    assert labels == [1, 0, 1, 0, 1, 0, 1, 0]  # stars >= 4
    # categorical with prefix 2: Paris and Parma are one token
    assert data.vocabularies["city"].tokens[0] == "Pa" and data.vocabularies["city"].counts[1] == 2
    # the multi-hot bags, in order, duplicates kept, an empty field an empty bag
    tags = data.train.jagged["tags"]
    vocab = data.vocabularies["tags"]
    assert tags.lengths.tolist() == [2, 1, 0, 3]
    assert tags.values.tolist() == vocab.transform(["a", "b", "b", "a", "c", "a"]).tolist()
    assert data.valid.jagged["tags"].values.tolist() == vocab.transform(["c", "b", "z"]).tolist()  # z unseen: OOV
    assert data.valid.jagged["tags"].values.tolist()[-1] == 0
    # dense: standardize with the train rows' mean and std (missing left out, then 0), log1p, none
    prices = np.array([10.0, 20.0, 30.0])
    mean, std = prices.mean(), prices.std()
    assert data.dense_stats == {"price": pytest.approx({"mean": mean, "std": std})}
    dense = torch.cat([data.train.dense, data.valid.dense, data.test.dense]).numpy()
    np.testing.assert_allclose(dense[:, 0], [(p - mean) / std if p == p else 0.0 for p in
                                             [10, 20, 30, math.nan, 40, 50, 60, 70]], rtol=1e-6)  # fmt: skip
    np.testing.assert_allclose(dense[:, 1], [math.log1p(max(c, 0)) for c in [3, 0, 0, -2, 7, 1, 2, 1]], rtol=1e-6)
    np.testing.assert_allclose(dense[:, 2], [-1.5, 2, 0, 1, 0, 0, 0, 0])
    # datetime parts (a missing day is OOV), and a quoted field holding the separator
    assert data.vocabularies["weekday"].transform(["0"])[0] == data.train.single[0, 1]  # 2024-01-01: Monday
    assert data.train.single[3, 1] == 0 and data.train.single[3, 2] == 0
    assert data.vocabularies["note"].tokens == ["x"]  # min_count 2 for this column: "with, comma" is rare


def test_given_vocabularies_and_dense_stats_as_saved_in_json(shop: tuple[Path, Path]) -> None:
    path, schema = shop
    first = load_dataset(f"csv:{path}?schema={schema}", (0.5, 0.25, 0.25))
    saved = json.loads(json.dumps({"v": first.vocabularies, "d": first.dense_stats}))
    again = load_dataset(f"csv:{path}", (0.25, 0.25, 0.5), schema=schema, vocabularies=saved["v"],
                         dense_stats=saved["d"])  # fmt: skip
    assert again.train.schema == first.train.schema
    assert torch.equal(again.test.dense[-2:], first.test.dense)
    assert torch.equal(again.test.single[-2:], first.test.single)
    with pytest.raises(ValueError, match=r"standardized with statistics of the training rows: give dense_stats"):
        load_dataset(f"csv:{path}", schema=schema, vocabularies=saved["v"])


def test_malformed_values_name_file_and_line_or_are_skipped(shop: tuple[Path, Path]) -> None:
    path, schema = shop
    rows = ROWS.copy()
    rows[2] = rows[2].replace(",30,", ",thirty,")  # price, file line 4
    rows[5] = rows[5].replace("2024-01-06", "2024-1-6")  # not zero-padded: file line 7
    rows[6] = "7,four,Oslo,a,60,2,0,2024-01-07,q"  # file line 8
    path.write_text("".join(line + "\n" for line in [HEADER, *rows]))
    with pytest.raises(ValueError, match=r"shop\.csv, line 4: column price has 'thirty', not a finite number"):
        load_csv(path, schema)
    data = load_dataset(f"csv:{path}?schema={schema}&on_bad_lines=skip")
    assert data.report == {"rows": 5, "skipped_lines": 3}
    rows[2] = ROWS[2]
    path.write_text("".join(line + "\n" for line in [HEADER, *rows]))
    with pytest.raises(ValueError, match=r"shop\.csv, line 7: column day has '2024-1-6', not a time in format"):
        load_csv(path, schema, ReadOptions(split=(1, 0, 0)))
    rows[5] = ROWS[5]
    path.write_text("".join(line + "\n" for line in [HEADER, *rows]))
    with pytest.raises(ValueError, match=r"shop\.csv, line 8: column stars has 'four', not a number \(the label is"):
        load_csv(path, schema, ReadOptions(split=(0, 0, 1), chunksize=1))
    path.write_text(HEADER + "\n" + '1,5,"Paris,a;b,10,3,0,2024-01-01,x\n')
    with pytest.raises(ValueError, match=r"shop\.csv, line 2: unbalanced double quotes"):
        load_csv(path, schema)


def test_headerless_tab_file_and_value_labels(tmp_path: Path) -> None:
    schema = tmp_path / "s.yaml"
    schema.write_text(
        "sep: \"\\t\"\nlabel: {values: {'yes': 1, 'no': 0}}\n"
        "columns: [{name: y, type: label}, {name: a, type: categorical}, {name: n, type: numeric}]\n"
    )
    path = tmp_path / "d.tsv"
    path.write_bytes(b"yes\tu\t1\r\nno\tv\t2\r\nno\tu\t\r\nyes\tw\t3\r\nmaybe\tu\t1\r\n")
    with pytest.raises(ValueError, match=r"d\.tsv, line 5: label 'maybe' in column y is not one of \['no', 'yes'\]"):
        load_csv(path, schema)
    data = load_csv(path, schema, ReadOptions(on_bad_lines="skip", split=(0.6, 0.2, 0.2)))
    assert data.train.labels.tolist() == [1, 0, 0] and data.valid.labels.tolist() == [1]
    assert data.vocabularies["a"].tokens == ["u", "v"]
    assert data.report == {"rows": 4, "skipped_lines": 1}


def test_schema_files_are_checked_with_their_file_and_key(tmp_path: Path) -> None:
    base = {"columns": [{"name": "y", "type": "label"}, {"name": "a", "type": "categorical"}]}
    with pytest.raises(ValueError, match=r"column 'a': type must be one of .* got 'categoric' \(did you mean"):
        parse_schema({"columns": [{"name": "y", "type": "label"}, {"name": "a", "type": "categoric"}]})
    with pytest.raises(ValueError, match=r"unknown key 'seperator' \(did you mean 'separator'\?\)"):
        parse_schema({"columns": [*base["columns"], {"name": "t", "type": "multi_hot", "seperator": ";"}]})
    with pytest.raises(ValueError, match=r"\['prefix'\] do not apply to type numeric"):
        parse_schema({"columns": [*base["columns"], {"name": "n", "type": "numeric", "prefix": 2}]})
    with pytest.raises(ValueError, match=r"exactly one column must have type label, got \[\]"):
        parse_schema({"columns": [{"name": "a", "type": "categorical"}]})
    with pytest.raises(ValueError, match=r"a datetime column needs format"):
        parse_schema({"columns": [*base["columns"], {"name": "d", "type": "datetime", "parts": {"h": "hour"}}]})
    with pytest.raises(ValueError, match=r"defaults.min_count must be an integer >= 1, got 0"):
        parse_schema({**base, "defaults": {"min_count": 0}})
    with pytest.raises(ValueError, match=r"label has both threshold and values"):
        parse_schema({**base, "label": {"threshold": 1, "values": {"1": 1}}})
    with pytest.raises(ValueError, match=r"threshold=3 given, but the label 'y' is read by values"):
        parse_schema(base).with_overrides(threshold=3)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match=r"schema file .*bad\.yaml must hold a mapping"):
        read_schema_file(bad)
    with pytest.raises(FileNotFoundError, match=r"no schema file 'avazoo' .*\(did you mean 'avazu'\?\)"):
        find_schema_file("avazoo")


def test_every_schema_file_in_data_is_valid() -> None:
    names = schema_names()
    assert {"avazu", "criteo", "frappe", "movielens_100k", "movielens_1m"} <= set(names)
    assert set(names) <= set(DATASETS)
    for name in names:
        sf = find_schema_file(name)
        assert sf.name == name and sf.description == ""  # the documentation is in YAML comments


def test_load_dataset_names_and_options(shop: tuple[Path, Path]) -> None:
    path, schema = shop
    with pytest.raises(ValueError, match=r"unknown dataset 'avazoo' \(did you mean 'avazu'\?\)"):
        load_dataset("avazoo:x.csv")
    with pytest.raises(ValueError, match=r"unknown data option 'skip_bad_line' \(did you mean 'skip_bad_lines'\?\)"):
        load_dataset(f"csv:{path}?schema={schema},skip_bad_line=1")
    with pytest.raises(ValueError, match=r"csv data needs a schema file"):
        load_dataset(f"csv:{path}")
    with pytest.raises(ValueError, match=r"schema= is for csv:PATH"):
        load_dataset(f"avazu:{path}", schema=schema)
    with pytest.raises(ValueError, match=r"avazu data needs a path"):
        load_dataset("avazu")
    looser = load_dataset(f"csv:{path}?schema={schema}", (0.5, 0.25, 0.25), min_count=3, numeric="none")
    assert looser.vocabularies["city"]["min_count"] == 3 and looser.dense_stats == {"price": pytest.approx(
        {"mean": 20.0, "std": np.std([10.0, 20.0, 30.0])})}  # fmt: skip
    assert looser.train.dense[0, 1].item() == 3.0  # clicks untransformed
    synthetic = load_dataset("synthetic:rows=500")
    assert synthetic.report == {"rows": 500, "skipped_lines": 0}


# -- Criteo through its schema file -----------------------------------------------------------


@pytest.mark.skipif(not (CRITEO / "kaggle_train_first10k.tsv").is_file(), reason=f"no Criteo samples at {CRITEO}")
@pytest.mark.parametrize("name", ["kaggle_train_first10k.tsv", "deepctr_criteo_sample.txt"])
def test_criteo_schema_file_reads_like_load_criteo(name: str) -> None:
    path = CRITEO / name
    generic, own = load_csv(path, "criteo"), load_criteo(path)
    assert generic.schema == own.schema and generic.vocabularies == own.vocabularies
    for part in ("train", "valid", "test"):
        a, b = getattr(generic, part), getattr(own, part)
        assert torch.equal(a.single, b.single) and torch.equal(a.dense, b.dense) and torch.equal(a.labels, b.labels)
    if name != "deepctr_criteo_sample.txt":
        return
    # load_dataset: load_criteo by default, the generic reader for skip mode; the same splits
    default = load_dataset(f"criteo:{path}")
    skipping = load_dataset(f"criteo:{path}?skip_bad_lines=1")
    assert default.vocabularies == skipping.vocabularies and torch.equal(default.test.dense, skipping.test.dense)
    assert default.report == skipping.report == {"rows": generic.report["rows"], "skipped_lines": 0}


def test_criteo_skip_mode_counts_bad_lines(tmp_path: Path) -> None:
    if not (CRITEO / "kaggle_train_first10k.tsv").is_file():
        pytest.skip(f"no Criteo samples at {CRITEO}")
    with (CRITEO / "kaggle_train_first10k.tsv").open() as f:
        lines = [next(f) for _ in range(20)]
    lines[3] = lines[3].replace("\t", "\tx\t", 1)  # 41 fields
    path = tmp_path / "bad.tsv"
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"bad\.tsv, line 4: 41 fields, expected 40"):
        load_dataset(f"criteo:{path}")
    data = load_dataset(f"criteo:{path}", (0.5, 0.25, 0.25), on_bad_lines="skip", min_count=1)
    assert data.report == {"rows": 19, "skipped_lines": 1}
    assert (len(data.train), len(data.valid), len(data.test)) == (9, 5, 5)
    with pytest.raises(ValueError, match=r"numeric=bucket is read by the Criteo reader only"):
        load_dataset(f"criteo:{path}?numeric=bucket,skip_bad_lines=1")
