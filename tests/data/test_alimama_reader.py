"""The Alimama/Taobao DMR-format reader on the real 500-row sample in ../shared/data and on
small files written here: columns, shared tables of histories and targets, masks, the most
recent behaviours kept, vocabularies fitted on train, malformed lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recemb.data import load_dataset
from recemb.data.alimama import AlimamaOptions, load_alimama
from recemb.data.tabular import ReadOptions

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SAMPLE = SHARED / "alimama_dmr_sample" / "alimama_sampled_train.txt"
needs_file = pytest.mark.skipif(not SAMPLE.is_file(), reason=f"the Alimama sample is not in {SHARED}")


def _raw() -> np.ndarray:
    return np.loadtxt(SAMPLE, delimiter=",")  # [500, 267], an independent parse


def history(data, name: str, k: int) -> list[int]:
    j = data.jagged[name]
    return j.values[j.offsets[k] : j.offsets[k + 1]].tolist()


@needs_file
def test_the_sample_reads_into_targets_histories_and_profile():
    data = load_dataset(f"alimama:{SAMPLE}")
    raw = _raw()
    schema = data.train.schema
    assert (len(data.train), len(data.valid), len(data.test)) == (350, 50, 100)
    assert [f.name for f in schema.sequences] == ["btag_his", "cate_his", "brand_his"]
    assert schema.feature("cate_his").table == "cate_id" and schema.feature("brand_his").table == "brand"
    assert schema.feature("btag_his").table is None and schema.dense == ("price",)
    assert torch.equal(data.test.labels, torch.from_numpy(raw[400:, 266]).float())
    assert torch.equal(data.groups["test"], torch.from_numpy(raw[400:, 250]).long())
    cate = data.vocabularies["cate_id"]["tokens"]  # the one vocabulary of target and history categories
    for k in (0, 7, 349):
        valid = raw[k, 150:200] == 1
        assert history(data.train, "cate_his", k) == [cate.index(int(c)) + 1 for c in raw[k, 50:100][valid]]
        assert data.train.single[k, schema.names.index("cate_id")] == cate.index(int(raw[k, 260])) + 1
        assert len(history(data.train, "brand_his", k)) == valid.sum()


@needs_file
def test_a_shorter_max_len_keeps_the_most_recent_behaviours():
    full = load_alimama(SAMPLE)
    short = load_alimama(SAMPLE, AlimamaOptions(max_len=10), vocabularies=full.vocabularies)
    raw = _raw()
    assert short.report["truncated_histories"] == int(((raw[:, 150:200] == 1).sum(1) > 10).sum())
    for k in range(5):
        assert history(short.train, "brand_his", k) == history(full.train, "brand_his", k)[-10:]
    assert short.train.schema.feature("cate_his").max_len == 10


@needs_file
def test_vocabularies_are_fitted_on_training_rows_and_reused():
    data = load_alimama(SAMPLE, read=ReadOptions(split=(0.5, 0.25, 0.25)))
    raw = _raw()
    assert set(data.vocabularies["mid"]["tokens"]) == {int(x) for x in raw[:250, 259]}
    again = load_alimama(SAMPLE, vocabularies=data.vocabularies, read=ReadOptions(split=(0.5, 0.25, 0.25)))
    assert torch.equal(again.test.single, data.test.single)
    with pytest.raises(ValueError, match=r"vocabularies must be given for the tables"):
        load_alimama(SAMPLE, vocabularies={"mid": data.vocabularies["mid"]})


def _line(mask_ones: int = 3, label: str = "1", price: str = "0.5") -> str:
    his = ["0"] * (50 - mask_ones) + ["1"] * mask_ones
    fields = his + his + his + his + ["0"] * 50 + ["7"] * 9 + ["3", "4", "5", "6", "8", price, "1", label]
    return ",".join(fields)


def test_malformed_lines_are_refused_or_skipped(tmp_path):
    path = tmp_path / "dmr.txt"
    lines = [_line(), _line(label="2"), _line() + ",9", _line(price="abc"), _line(mask_ones=0), _line()]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"{path.name}, line 2: a mask or the label .* is not 0 or 1"):
        load_alimama(path)
    data = load_dataset(f"alimama:{path}?on_bad_lines=skip", split=(1.0, 0.0, 0.0))
    assert data.report["skipped_lines"] == 3 and data.report["rows"] == 3
    assert data.report["empty_histories"] == 1  # the row whose mask is all 0
    assert data.train.jagged["cate_his"].lengths.tolist() == [3, 0, 3]
    for bad, match in ((lines[2], "268 fields, expected 267"), (lines[3], "field 265 is not a number")):
        one = tmp_path / "one.txt"
        one.write_text(lines[0] + "\n" + bad + "\n")
        with pytest.raises(ValueError, match=rf"{one.name}, line 2: {match}"):
            load_alimama(one)


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"AlimamaOptions.max_len must be in \[1, 50\]"):
        AlimamaOptions(max_len=60)
    with pytest.raises(FileNotFoundError, match="has no DMR-format file"):
        load_alimama(tmp_path)
    with pytest.raises(ValueError, match=r"unknown data option 'negatives'.* for alimama"):
        load_dataset(f"alimama:{tmp_path}?negatives=2")


@needs_file
@pytest.mark.parametrize("name", ["din", "twin", "dare"])
def test_target_attention_models_pair_category_and_brand_histories(name):
    from recemb.models import build_model, model_config
    from recemb.storage import StoreSettings
    from recemb.tables import Decoupled, build_embedding

    data = load_alimama(SAMPLE, AlimamaOptions(max_len=8))
    table = Decoupled(attention="hashed:dim=8;buckets=256", representation="full:dim=8")
    model = build_model(build_embedding(data.train.schema, table, StoreSettings("reference")), model_config(name))
    assert [(b.histories, b.targets) for b in model.behaviours] == [(("cate_his", "brand_his"), ("cate_id", "brand"))]
    assert model.unpaired == ["btag_his"]
    batch = data.train.batch(torch.arange(16))
    logits = model(batch.sparse, batch.dense)
    assert logits.shape == (16,) and torch.isfinite(logits).all()
