"""The Frappe / libFM reader (schema data/frappe.yaml) on the real files in
../shared/data/frappe: the two-file layout, single files, the three-file layout, malformed lines."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from recemb.data import load_dataset
from recemb.data.frappe import load_frappe
from recemb.data.tabular import ReadOptions

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FRAPPE = SHARED / "frappe"
VALIDATION, TEST = FRAPPE / "frappe.validation.libfm", FRAPPE / "frappe.test.libfm"
pytestmark = pytest.mark.skipif(not TEST.is_file(), reason=f"the Frappe files are not at {FRAPPE}")
FIELDS = ("user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city")


@functools.cache
def _raw(path: Path) -> list[list[str]]:
    """An independent parse: [label, index of field 1, ..., index of field 10] per line."""
    with path.open(newline="") as f:
        return [[t.split(":")[0] for t in line.split()] for line in f]


def _all(data, attr: str) -> torch.Tensor:
    return torch.cat([getattr(data.train, attr), getattr(data.valid, attr), getattr(data.test, attr)])


@pytest.fixture(scope="module")
def folder():
    return load_frappe(FRAPPE)


def test_folder_layout_trains_on_the_validation_file_and_tests_on_the_test_file(folder) -> None:
    valid_raw, test_raw = _raw(VALIDATION), _raw(TEST)
    assert (len(valid_raw), len(test_raw)) == (57_722, 28_860)  # as PROVENANCE.md says
    n_train = round(57_722 * 7 / 8)  # split 0.7 : 0.1 of the validation file
    assert (len(folder.train), len(folder.valid), len(folder.test)) == (n_train, 57_722 - n_train, 28_860)
    label = {"1": 1.0, "-1": 0.0}
    assert folder.train.labels.tolist() == [label[r[0]] for r in valid_raw[:n_train]]  # file order
    assert folder.test.labels.tolist() == [label[r[0]] for r in test_raw]
    assert int(folder.train.labels.sum() + folder.valid.labels.sum()) == 19_063
    assert int(folder.test.labels.sum()) == 9_536
    assert folder.report == {"rows": 57_722 + 28_860, "skipped_lines": 0}


def test_ten_categorical_fields_fitted_on_the_training_rows(folder) -> None:
    valid_raw, test_raw = _raw(VALIDATION), _raw(TEST)
    n_train = len(folder.train)
    assert folder.schema.names == FIELDS and all(f.kind == "single" for f in folder.schema.sparse)
    assert folder.schema.dense == ()
    rows = valid_raw + test_raw
    ids = _all(folder, "single")
    for j, name in enumerate(FIELDS):
        train_values = {r[1 + j] for r in valid_raw[:n_train]}
        assert folder.vocabularies[name].size == len(train_values) + 1  # min_count 1, + OOV
        assert int(folder.vocabularies[name].counts.sum()) == n_train
        assert ids[:, j].tolist() == folder.vocabularies[name].transform([r[1 + j] for r in rows]).tolist()
    # users met only in the test file map to OOV there (and the CRLF never reaches a token)
    train_users = {r[1] for r in valid_raw[:n_train]}
    unseen = [i for i, r in enumerate(test_raw) if r[1] not in train_users]
    assert unseen and (folder.test.single[unseen, 0] == 0).all()
    assert all(t.isdigit() for t in folder.vocabularies["city"].tokens)


def test_one_file_is_split_in_file_order() -> None:
    data = load_dataset(f"frappe:{TEST}")
    assert (len(data.train), len(data.valid), len(data.test)) == (20_202, 2_886, 5_772)
    assert data.report["rows"] == 28_860


def test_folder_with_a_train_file_keeps_the_published_split(tmp_path: Path) -> None:
    lines = VALIDATION.read_bytes().splitlines(keepends=True)
    (tmp_path / "frappe.train.libfm").write_bytes(b"".join(lines[:300]))
    (tmp_path / "frappe.validation.libfm").write_bytes(b"".join(lines[300:400]))
    (tmp_path / "frappe.test.libfm").write_bytes(b"".join(TEST.read_bytes().splitlines(keepends=True)[:50]))
    data = load_frappe(tmp_path)
    assert (len(data.train), len(data.valid), len(data.test)) == (300, 100, 50)
    assert int(data.vocabularies["user"].counts.sum()) == 300
    with pytest.raises(FileNotFoundError, match="lacks the test file"):
        (tmp_path / "frappe.test.libfm").unlink()
        load_frappe(tmp_path)


# -- malformed input -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lines() -> list[str]:
    with VALIDATION.open(newline="") as f:
        return [next(f) for _ in range(12)]  # CRLF kept


def _write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_bytes("".join(lines).encode())
    return path


def test_malformed_lines_name_file_and_line(tmp_path: Path, lines: list[str]) -> None:
    short = lines.copy()
    short[3] = short[3].rsplit(" ", 1)[0] + "\r\n"
    with pytest.raises(ValueError, match=r"short\.libfm, line 4: 10 tokens, expected 11: a label and 10 INDEX:1"):
        load_frappe(_write(tmp_path, "short.libfm", short))
    value = lines.copy()
    pairs = value[6].split()
    pairs[2] = pairs[2].replace(":1", ":0.5")  # item
    value[6] = " ".join(pairs) + "\r\n"
    with pytest.raises(ValueError, match=r"value\.libfm, line 7: pair 2 \(item\) is '\d+:0\.5', expected INDEX:1"):
        load_frappe(_write(tmp_path, "value.libfm", value))
    label = lines.copy()
    label[9] = "2" + label[9][label[9].index(" "):]
    with pytest.raises(ValueError, match=r"label\.libfm, line 10: label '2' in column label is not one of"):
        load_frappe(_write(tmp_path, "label.libfm", label), options=ReadOptions(chunksize=5))
    (tmp_path / "empty.libfm").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.libfm: the file is empty"):
        load_frappe(tmp_path / "empty.libfm")


def test_skip_mode_counts_malformed_lines(tmp_path: Path, lines: list[str]) -> None:
    bad = lines.copy()
    bad[0] = bad[0].replace(":1 ", ":x ", 1)  # not INDEX:1
    bad[5] = "1 " + bad[5]  # 12 tokens
    bad[11] = "maybe" + bad[11][bad[11].index(" "):]
    path = _write(tmp_path, "bad.libfm", bad)
    data = load_dataset(f"frappe:{path}?on_bad_lines=skip", (0.5, 0.25, 0.25))
    assert data.report == {"rows": 9, "skipped_lines": 3}
    assert (len(data.train), len(data.valid), len(data.test)) == (4, 3, 2)
    good = [ln for i, ln in enumerate(lines) if i not in (0, 5, 11)]
    labels = torch.cat([data.train.labels, data.valid.labels, data.test.labels])
    assert labels.tolist() == [1.0 if ln.startswith("1 ") else 0.0 for ln in good]
