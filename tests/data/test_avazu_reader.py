"""The Avazu reader (schema data/avazu.yaml) on the real sample in ../shared/data/avazu:
rows, labels, the hour features, vocabularies fitted on train, CRLF files, malformed lines."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import pytest
import torch

from recemb.data import load_dataset
from recemb.data.avazu import load_avazu
from recemb.data.tabular import ReadOptions

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SAMPLE = SHARED / "avazu" / "deepctr_avazu_sample.csv"
pytestmark = pytest.mark.skipif(not SAMPLE.is_file(), reason=f"the Avazu sample is not at {SAMPLE}")
CATEGORICAL = (
    "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain", "app_category",
    "device_id", "device_ip", "device_model", "device_type", "device_conn_type",
    "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
)  # fmt: skip


def _raw(path: Path = SAMPLE) -> tuple[list[str], list[dict[str, str]]]:
    """An independent parse with the csv module: header and rows."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]


def _all(data, attr: str) -> torch.Tensor:
    return torch.cat([getattr(data.train, attr), getattr(data.valid, attr), getattr(data.test, attr)])


@pytest.fixture(scope="module")
def sample():
    return load_avazu(SAMPLE)


def test_rows_labels_and_split_in_file_order(sample) -> None:
    _, rows = _raw()
    assert (len(sample.train), len(sample.valid), len(sample.test)) == (70, 10, 20)
    labels = _all(sample, "labels")
    assert labels.tolist() == [float(r["click"]) for r in rows]  # file order, no shuffling
    assert int(labels.sum()) == sum(r["click"] == "1" for r in rows) == 20  # 20 %, as PROVENANCE.md says
    assert sample.report == {"rows": 100, "skipped_lines": 0}


def test_features_id_dropped_hour_split_into_hour_of_day_and_weekday(sample) -> None:
    header, rows = _raw()
    assert len(header) == 24 and header[0] == "id"
    assert sample.schema.names == ("hour", "weekday", *CATEGORICAL)
    assert all(f.kind == "single" for f in sample.schema.sparse) and sample.schema.dense == ()
    assert sample.schema.label == "click"
    when = [datetime.strptime(r["hour"], "%y%m%d%H") for r in rows]  # 14102100: Tuesday 21 Oct 2014, 0 h
    ids = _all(sample, "single")
    assert sample.vocabularies["hour"].transform([str(t.hour) for t in when]).tolist() == ids[:, 0].tolist()
    assert sample.vocabularies["weekday"].transform([str(t.weekday()) for t in when]).tolist() == ids[:, 1].tolist()
    assert sample.vocabularies["hour"].tokens == ["0"] and sample.vocabularies["weekday"].tokens == ["1"]


def test_vocabularies_are_fitted_on_the_training_rows_only(sample) -> None:
    _, rows = _raw()
    ids = _all(sample, "single")
    for j, c in enumerate(CATEGORICAL, start=2):
        vocab = sample.vocabularies[c]
        assert sample.schema.feature(c).cardinality == vocab.size
        assert int(vocab.counts.sum()) == 70  # only the training rows were counted
        assert (vocab.counts[1:] >= 2).all()  # min_count 2, from data/avazu.yaml
        assert ids[:, j].tolist() == vocab.transform([r[c] for r in rows]).tolist()
    # a device_model first seen in the test rows maps to OOV there
    train_models = {r["device_model"] for r in rows[:70]}
    only_in_test = [i for i in range(80, 100) if rows[i]["device_model"] not in train_models]
    assert only_in_test
    col = 2 + CATEGORICAL.index("device_model")
    assert (sample.test.single[[i - 80 for i in only_in_test], col] == 0).all()
    # min_count from the schema file can be overridden
    looser = load_dataset(f"avazu:{SAMPLE}?min_count=1")
    assert len(looser.vocabularies["device_ip"]["tokens"]) == len({r["device_ip"] for r in rows[:70]})


def test_crlf_file_reads_like_lf(tmp_path: Path) -> None:
    lines = SAMPLE.read_text().splitlines()[:11]  # header + 10 rows
    lf, crlf = tmp_path / "lf.csv", tmp_path / "crlf.csv"
    lf.write_bytes("".join(line + "\n" for line in lines).encode())
    crlf.write_bytes("".join(line + "\r\n" for line in lines).encode())
    assert b"\r\n" in crlf.read_bytes()
    options = ReadOptions(split=(0.6, 0.2, 0.2))
    a, b = load_avazu(lf, options=options), load_avazu(crlf, options=options)
    for part in ("train", "valid", "test"):
        assert torch.equal(getattr(a, part).single, getattr(b, part).single)
        assert torch.equal(getattr(a, part).labels, getattr(b, part).labels)
    assert a.vocabularies == b.vocabularies
    assert not any("\r" in t for v in b.vocabularies.values() for t in v.tokens)  # C21 is the last field


def test_given_vocabularies_from_a_saved_run(sample, tmp_path: Path) -> None:
    saved = json.loads(json.dumps({k: v.to_dict() for k, v in sample.vocabularies.items()}))  # as vocab.json
    head = tmp_path / "head.csv"
    head.write_text("".join(line + "\n" for line in SAMPLE.read_text().splitlines()[:21]))
    again = load_dataset(f"avazu:{head}", (0.5, 0.25, 0.25), vocabularies=saved)
    assert again.train.schema == sample.schema  # the cardinalities of the saved run, not refitted
    assert torch.equal(torch.cat([again.train.single, again.valid.single, again.test.single]), sample.train.single[:20])


# -- malformed input -------------------------------------------------------------------------


def _write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return SAMPLE.read_text().splitlines()[:21]


def test_malformed_lines_name_file_and_line(tmp_path: Path, lines: list[str]) -> None:
    short = lines.copy()
    short[4] = short[4].rsplit(",", 1)[0]  # file line 5 loses C21
    with pytest.raises(ValueError, match=r"short\.csv, line 5: 23 fields, expected 24 \(comma-separated id, click"):
        load_avazu(_write(tmp_path, "short.csv", short))
    label = lines.copy()
    label[7] = label[7].replace(",0,14102100,", ",yes,14102100,").replace(",1,14102100,", ",yes,14102100,")
    with pytest.raises(ValueError, match=r"label\.csv, line 8: label 'yes' in column click is not one of \['0', '1'\]"):
        load_avazu(_write(tmp_path, "label.csv", label))
    hour = lines.copy()
    hour[12] = hour[12].replace(",14102100,", ",141021,")
    with pytest.raises(ValueError, match=r"hour\.csv, line 13: column hour has '141021', not a time in format"):
        load_avazu(_write(tmp_path, "hour.csv", hour), options=ReadOptions(chunksize=4))
    with pytest.raises(ValueError, match=r"header\.csv, line 1: the header must be id,click,hour"):
        load_avazu(_write(tmp_path, "header.csv", [lines[0].replace("click", "clicked"), *lines[1:]]))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv: the file is empty"):
        load_avazu(tmp_path / "empty.csv", options=ReadOptions(on_bad_lines="skip"))
    with pytest.raises(ValueError, match=r"only_header\.csv: a header but no data rows"):
        load_avazu(_write(tmp_path, "only_header.csv", lines[:1]))


def test_skip_mode_drops_and_counts_malformed_lines(tmp_path: Path, lines: list[str]) -> None:
    bad = lines.copy()
    bad[2] = bad[2] + ",extra"  # data row 2 (train): 25 fields
    bad[9] = bad[9].replace(",14102100,", ",tomorrow,")  # data row 9 (train)
    bad[20] = ""  # data row 20 (test): a blank line
    path = _write(tmp_path, "bad.csv", bad)
    with pytest.raises(ValueError, match=r"bad\.csv, line 3: 25 fields"):
        load_avazu(path)
    data = load_dataset(f"avazu:{path}?skip_bad_lines=1", (0.5, 0.25, 0.25))
    assert data.report == {"rows": 17, "skipped_lines": 3}
    # the part boundaries stay at data lines 10 and 15: the skipped lines leave their parts short
    assert (len(data.train), len(data.valid), len(data.test)) == (8, 5, 4)
    _, rows = _raw(SAMPLE)
    kept = [r for i, r in enumerate(rows[:20]) if i not in (1, 8, 19)]
    labels = torch.cat([data.train.labels, data.valid.labels, data.test.labels])
    assert labels.tolist() == [float(r["click"]) for r in kept]
    assert sum(data.vocabularies["hour"]["counts"]) == 8  # fitted on the kept training rows
    same = load_dataset(f"avazu:{path}", (0.5, 0.25, 0.25), on_bad_lines="skip")
    assert same.report == data.report and torch.equal(same.test.single, data.test.single)
