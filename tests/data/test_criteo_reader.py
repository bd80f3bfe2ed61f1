"""The Criteo reader on the real samples in ../shared/data/criteo, and its refusal of
malformed lines (named by file and line)."""

from __future__ import annotations

import csv
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from recemb.data.criteo import CATEGORICAL, NUMERIC, CriteoConfig, load_criteo

REPO = Path(__file__).resolve().parents[2]
CRITEO = next(
    (p for p in (REPO.parent / "shared" / "data" / "criteo", REPO / "shared" / "data" / "criteo") if p.is_dir()),
    REPO.parent / "shared" / "data" / "criteo",
)
TSV = CRITEO / "kaggle_train_first10k.tsv"
CSV = CRITEO / "deepctr_criteo_sample.txt"
pytestmark = pytest.mark.skipif(not TSV.is_file(), reason=f"the Criteo samples are not at {CRITEO}")


def _raw(path: Path) -> list[list[str]]:
    """An independent parse with the csv module: the rows as lists of 40 strings."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    return rows[1:] if rows[0][0] == "label" else rows


@pytest.fixture(scope="module")
def tsv():
    return load_criteo(TSV)


def test_kaggle_tsv_rows_labels_and_split_in_file_order(tsv) -> None:
    raw = _raw(TSV)
    assert (len(tsv.train), len(tsv.valid), len(tsv.test)) == (7_000, 1_000, 2_000)
    labels = torch.cat([tsv.train.labels, tsv.valid.labels, tsv.test.labels])
    assert int(labels.sum()) == 2_182  # 21.82 %, as PROVENANCE.md says
    assert labels.tolist() == [float(r[0]) for r in raw]  # file order, no shuffling
    assert tsv.schema.names == CATEGORICAL and tsv.schema.dense == NUMERIC


def test_dense_is_log1p_of_the_clamped_count(tsv) -> None:
    raw = _raw(TSV)
    dense = torch.cat([tsv.train.dense, tsv.valid.dense, tsv.test.dense]).numpy()
    expected = np.array([[math.log1p(max(float(v), 0.0)) if v else 0.0 for v in r[1:14]] for r in raw])
    np.testing.assert_allclose(dense, expected, rtol=1e-6, atol=1e-6)
    assert (np.array([r[2] for r in raw], dtype=float) < 0).any()  # I2 has negative counts, clamped


def test_vocabularies_are_fitted_on_the_training_rows_only(tsv) -> None:
    raw = _raw(TSV)
    for j, c in enumerate(CATEGORICAL):
        vocab = tsv.vocabularies[c]
        assert tsv.schema.feature(c).cardinality == vocab.size
        assert int(vocab.counts.sum()) == 7_000  # only the training rows were counted
        assert (vocab.counts[1:] >= 2).all()  # min_count=2
        column = [r[14 + j] for r in raw]
        ids = torch.cat([tsv.train.single[:, j], tsv.valid.single[:, j], tsv.test.single[:, j]])
        assert ids.tolist() == vocab.transform(column).tolist()
    # a category that occurs in the test rows only maps to OOV there
    c3 = [r[16] for r in raw]
    train_values = set(c3[:7_000])
    only_in_test = [i for i in range(8_000, 10_000) if c3[i] and c3[i] not in train_values]
    assert only_in_test
    assert (tsv.test.single[[i - 8_000 for i in only_in_test], 2] == 0).all()
    # while a category frequent in train keeps an id of its own
    assert tsv.train.single[:, 2].max() == tsv.vocabularies["C3"].size - 1


def test_csv_sample_with_header_and_float_integers() -> None:
    data = load_criteo(CSV)
    raw = _raw(CSV)
    assert (len(data.train), len(data.valid), len(data.test)) == (140, 20, 40)
    labels = torch.cat([data.train.labels, data.valid.labels, data.test.labels])
    assert int(labels.sum()) == 49
    assert raw[0][3] == "260.0"  # I3 of the first row, written as a float
    assert data.train.dense[0, 2].item() == pytest.approx(math.log1p(260.0))
    assert data.train.dense[0, 0].item() == 0.0  # I1 missing


def test_bucket_mode_turns_counts_into_categorical_features() -> None:
    data = load_criteo(TSV, numeric="bucket")
    raw = _raw(TSV)
    assert data.schema.names == NUMERIC + CATEGORICAL
    assert data.train.dense.shape == (7_000, 0)

    def bucket(v: str) -> int:  # the winners' encoding, written independently
        if v == "":
            return 0
        x = int(v)
        return int(math.log(x) ** 2) if x > 2 else x - 3

    for j, c in enumerate(NUMERIC):
        tokens = np.array([bucket(r[1 + j]) for r in raw])
        ids = torch.cat([data.train.single[:, j], data.valid.single[:, j], data.test.single[:, j]])
        assert ids.tolist() == data.vocabularies[c].transform(tokens).tolist()
    # I1 is often missing: missing is a bucket of its own, not the OOV id
    i1 = data.vocabularies["I1"]
    assert 0 in i1.tokens
    missing_rows = [i for i, r in enumerate(raw[:7_000]) if r[1] == ""]
    assert missing_rows and (data.train.single[missing_rows, 0] == i1.tokens.index(0) + 1).all()


def test_max_rows_chunks_and_given_vocabularies() -> None:
    head = load_criteo(TSV, max_rows=1_000, chunksize=333)
    assert (len(head.train), len(head.valid), len(head.test)) == (700, 100, 200)
    assert head.train.labels.tolist() == [float(r[0]) for r in _raw(TSV)[:700]]
    small_chunks = load_criteo(TSV, chunksize=3_001)  # the 7,000-row boundary inside a chunk
    full = load_criteo(TSV)
    assert torch.equal(small_chunks.test.single, full.test.single)
    assert small_chunks.vocabularies == full.vocabularies
    # vocabularies of one run applied to another file: no refitting, same cardinalities
    other = load_criteo(CSV, vocabularies=full.vocabularies)
    assert other.schema == full.schema
    assert CriteoConfig(**asdict(full.config)) == full.config


# -- malformed input -------------------------------------------------------------------------


def _write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def good_lines() -> list[str]:
    with TSV.open() as f:
        return [next(f).rstrip("\n") for _ in range(8)]


def test_wrong_field_count_names_file_and_line(tmp_path: Path, good_lines: list[str]) -> None:
    short = good_lines.copy()
    short[2] = short[2].rsplit("\t", 1)[0]  # line 3 loses its last field
    path = _write(tmp_path, "short.tsv", short)
    with pytest.raises(ValueError, match=r"short\.tsv, line 3: 39 fields, expected 40"):
        load_criteo(path)
    long = good_lines.copy()
    long[6] += "\textra"  # line 7, in the third chunk of 3 lines
    path = _write(tmp_path, "long.tsv", long)
    with pytest.raises(ValueError, match=r"long\.tsv, line 7: 41 fields, expected 40"):
        load_criteo(path, chunksize=3)
    blank = good_lines[:4] + [""] + good_lines[4:]
    with pytest.raises(ValueError, match=r"line 5: 0 fields"):
        load_criteo(_write(tmp_path, "blank.tsv", blank))


def test_non_numeric_count_and_bad_label_name_the_line(tmp_path: Path, good_lines: list[str]) -> None:
    lines = good_lines.copy()
    fields = lines[1].split("\t")
    fields[2] = "abc"  # I2
    lines[1] = "\t".join(fields)
    with pytest.raises(ValueError, match=r"bad_i\.tsv, line 2: column I2 has 'abc', not a finite number"):
        load_criteo(_write(tmp_path, "bad_i.tsv", lines))
    lines = good_lines.copy()
    lines[4] = "2" + lines[4][1:]
    with pytest.raises(ValueError, match=r"bad_label\.tsv, line 5: label '2' is not 0 or 1"):
        load_criteo(_write(tmp_path, "bad_label.tsv", lines))


def test_csv_line_numbers_count_the_header(tmp_path: Path) -> None:
    lines = CSV.read_text().splitlines()[:6]
    lines[3] = lines[3].replace(",", ",1e400,", 1)  # data row 3, file line 4: 41 fields
    with pytest.raises(ValueError, match=r"line 4: 41 fields"):
        load_criteo(_write(tmp_path, "bad.csv", lines))
    lines = CSV.read_text().splitlines()[:6]
    fields = lines[2].split(",")
    fields[5] = "inf"  # I5 of file line 3
    lines[2] = ",".join(fields)
    with pytest.raises(ValueError, match=r"line 3: column I5 has 'inf'"):
        load_criteo(_write(tmp_path, "inf.csv", lines))


def test_empty_headless_and_unknown_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty\.tsv: the file is empty"):
        load_criteo(empty)
    header_only = _write(tmp_path, "header.csv", [CSV.read_text().splitlines()[0]])
    with pytest.raises(ValueError, match=r"header\.csv: a header but no data rows"):
        load_criteo(header_only)
    wrong_header = _write(tmp_path, "wrong.csv", ["label,I1,I2", "0,1,2"])
    with pytest.raises(ValueError, match=r"wrong\.csv, line 1: the header must be"):
        load_criteo(wrong_header)
    with pytest.raises(FileNotFoundError, match="no Criteo file"):
        load_criteo(tmp_path / "missing.tsv")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"split": (0.7, 0.2, 0.2)}, "split must be 3 fractions"),
        ({"min_count": 0}, "min_count must be >= 1, got 0"),
        ({"numeric": "raw"}, "numeric must be 'log' or 'bucket', got 'raw'"),
        ({"max_rows": 0}, "max_rows must be >= 1"),
    ],
)
def test_config_errors(kwargs: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        CriteoConfig(**kwargs)


def test_last_line_without_newline_is_read(tmp_path: Path, good_lines: list[str]) -> None:
    path = tmp_path / "no_final_newline.tsv"
    path.write_text("\n".join(good_lines))
    data = load_criteo(path, split=(0.5, 0.25, 0.25), min_count=1, max_rows=100)
    labels = torch.cat([data.train.labels, data.valid.labels, data.test.labels])
    assert labels.tolist() == [float(line[0]) for line in good_lines]
