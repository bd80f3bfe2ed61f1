"""Smoke test of `recemb bench lookup` at toy sizes: the code path of every variant runs,
and the result has its keys. No timing is asserted (machines are shared and noisy)."""

import argparse
import dataclasses
import json

import pytest
import torch

from recemb.bench import kinds_lookup, lookup
from recemb.bench.timing import time_fn, time_interleaved
from recemb.bench.workload import CRITEO_CARDINALITIES, criteo_schema, zipf_batches, zipf_ids
from recemb.tables import KINDS

TINY = ["--features", "3", "--cap", "500", "--batch", "32", "--repeats", "2", "--warmup", "1", "--batches", "2"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    lookup.add_arguments(parser)
    return parser.parse_args(argv)


def test_run_returns_positive_ratios_and_settings(capsys):
    threads = torch.get_num_threads()
    try:
        result = lookup.run(parse(TINY))
    finally:
        torch.set_num_threads(threads)
    for key in ("train_speedup_vs_loop", "forward_speedup_vs_loop", "train_ratio_vs_tbe", "forward_ratio_vs_tbe"):
        for k in (key, key + "_wall"):
            assert isinstance(result[k], float) and result[k] > 0, k
    assert set(result["variants"]) == set(lookup.VARIANTS)
    for name, row in result["variants"].items():
        assert row["forward_ms"] > 0 and row["train_ms"] > 0 and row["train_wall_ms"] > 0
        assert result[f"{name}_train_ms"] == row["train_ms"]
    settings = result["settings"]
    assert (settings["batch"], settings["dim"], settings["cap"], settings["repeats"], settings["threads"]) == (
        32, 16, 500, 2, 1
    )
    assert settings["clock"] == "cpu"
    assert settings["rows"] == sum(min(c, 500) for c in CRITEO_CARDINALITIES[:3])
    json.dumps(result)  # the CLI prints it
    out = capsys.readouterr().out
    assert "recemb" in out and "train_speedup_vs_loop" in out


def test_module_main_prints_the_json_last(capsys):
    threads = torch.get_num_threads()
    try:
        lookup.main([*TINY, "--variants", "recemb,loop", "--dim", "8"])
    finally:
        torch.set_num_threads(threads)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["variants"]) == {"recemb", "loop"}
    assert result["train_speedup_vs_loop"] > 0 and "train_ratio_vs_tbe" not in result


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="--variants"):
        lookup.run(parse([*TINY, "--variants", "recemb,nope"]))
    with pytest.raises(ValueError, match="features"):
        criteo_schema(features=27)


KINDS_UNDER_TEST = "full,hashed,double_hash,qr,hash_embedding,robe,unified"


def test_kinds_mode_prints_per_kind_ratios_to_full_as_the_last_json_line(capsys):
    threads = torch.get_num_threads()
    try:
        lookup.main([*TINY, "--kinds", KINDS_UNDER_TEST, "--budget-ratio", "0.1"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert "hashing" in out[1] and "variants" not in result  # the table, and only the kinds' comparison
    assert list(result["kinds"]) == KINDS_UNDER_TEST.split(",")
    assert result["settings"]["budget_ratio"] == 0.1 and result["settings"]["kinds"] == list(result["kinds"])
    full = result["kinds"]["full"]
    assert full["train_speedup_vs_full"] == full["forward_speedup_vs_full"] == 1.0 and full["bytes_vs_full"] == 1.0
    for name, row in result["kinds"].items():
        for key in ("train_speedup_vs_full", "forward_speedup_vs_full", "train_speedup_vs_full_wall"):
            assert isinstance(row[key], float) and row[key] > 0, (name, key)
        assert isinstance(row["bytes"], int) and row["bytes"] > 0
        assert row["forward_ms"] > 0 and row["train_ms"] > 0 and row["transform_ms"] > 0
        assert row["hashing_share"] == pytest.approx(row["transform_ms"] / row["forward_ms"])
        if name != "full":
            assert row["bytes"] <= 0.1 * full["bytes"], name  # each kind fits the budget


def test_kinds_mode_through_the_cli_keeps_the_json_last(capsys):
    from recemb import cli

    threads = torch.get_num_threads()
    try:
        assert cli.main(["bench", "lookup", *TINY, "--kinds", "unified", "--budget-ratio", "0.2"]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(result["kinds"]) == ["full", "unified"]  # full is always the baseline
    assert result["kinds"]["unified"]["bytes_vs_full"] <= 0.2


def test_kinds_mode_refuses_bad_options():
    with pytest.raises(ValueError, match="did you mean 'hashed'"):
        lookup.run(parse([*TINY, "--kinds", "hashd"]))
    with pytest.raises(ValueError, match="not both"):
        lookup.run(parse([*TINY, "--kinds", "hashed", "--variants", "recemb"]))
    with pytest.raises(ValueError, match="--budget-ratio"):
        lookup.run(parse([*TINY, "--kinds", "hashed", "--budget-ratio", "0"]))
    for kind, cls in KINDS.items():  # kinds that cannot be sized to a budget (decoupled wraps two)
        if kind != "full" and "budget_ratio" not in {f.name for f in dataclasses.fields(cls)}:
            with pytest.raises(ValueError, match="no budget_ratio"):
                kinds_lookup.kind_config(kind, 16, 0.1)
    assert kinds_lookup.parse_kinds("unified, full,unified") == ["full", "unified"]


def test_zipf_ids_are_in_range_skewed_and_seeded():
    ids = zipf_ids(1000, 5000, 1.1, torch.Generator().manual_seed(0))
    assert ids.dtype == torch.int64 and int(ids.min()) >= 0 and int(ids.max()) < 1000
    counts = torch.bincount(ids, minlength=1000)
    assert int(counts.max()) > 10 * 5000 / 1000  # a hot id, far above uniform
    assert int(counts.argmax()) != 0  # ranks are scrambled: the hottest id is not id 0 (seed 0)
    again = zipf_ids(1000, 5000, 1.1, torch.Generator().manual_seed(0))
    assert torch.equal(ids, again)


def test_zipf_batches_are_kjts_of_one_id_per_feature():
    schema = criteo_schema(features=4, cap=100)
    batches = zipf_batches(schema, batch=8, count=3, seed=1)
    assert len(batches) == 3
    for kjt in batches:
        assert list(kjt.keys()) == list(schema.names) and kjt.stride() == 8
        assert kjt.length_per_key() == [8] * 4
        per_key = kjt.values().view(4, 8)
        for f, row in zip(schema.sparse, per_key):
            assert int(row.min()) >= 0 and int(row.max()) < f.cardinality


def test_timing_counts_steps_across_warmup_and_rounds():
    seen = []
    timing = time_fn(seen.append, warmup=2, repeats=3)
    assert seen == [0, 1, 2, 3, 4] and timing.repeats == 3
    assert timing.median_ms("wall") >= 0 and timing.median_ms("cpu") >= 0
    calls = {"a": [], "b": []}
    out = time_interleaved({k: v.append for k, v in calls.items()}, warmup=1, repeats=5, rounds=2)
    assert {k: t.repeats for k, t in out.items()} == {"a": 5, "b": 5}
    assert calls["a"] == list(range(7))  # 2 rounds: 1 warm-up + 3, then 1 warm-up + 2
