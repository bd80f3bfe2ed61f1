"""`recemb bench compression` at toy sizes: the protocol (kinds, budgets, infeasible and
failed cells, the same test rows for all), the outputs, and the bootstrap interval."""

import argparse
import csv
import json
import operator

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from recemb.bench import compression, parallel_runs
from recemb.metrics import paired_bootstrap_auc_diff
from recemb.tables import KINDS

TINY = "synthetic:rows=1200,cardinalities=10;60,n_dense=2,multi_hot=0,sequences=0"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    compression.add_arguments(parser)
    return parser.parse_args(argv)


SWEEP = ["--data", TINY, "--kinds", "full,hashed", "--budgets", "1,0.25,0.001", "--seeds", "2", "--epochs", "1",
         "--rounds", "50", "--pairs", "full:hashed"]  # fmt: skip


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One toy sweep, shared: full and hashed at budgets 1, 0.25 and 0.001, two seeds."""
    out = tmp_path_factory.mktemp("sweep")
    threads = torch.get_num_threads()
    try:
        result = compression.run(parse([*SWEEP, "--out", str(out)]))
    finally:
        torch.set_num_threads(threads)
    return result, out


def test_all_is_full_and_every_budgeted_kind():
    kinds, skipped = compression.select_kinds("all")
    assert kinds[0] == "full" and set(kinds) | set(skipped) == set(KINDS)
    assert "decoupled" in skipped and "hashed" in kinds and "unified" in kinds
    with pytest.raises(ValueError, match="decoupled"):
        compression.select_kinds("full,decoupled")
    with pytest.raises(ValueError, match="--kinds"):
        compression.select_kinds("full,nope")


def test_budgets_and_the_full_reference():
    assert compression.parse_budgets("0.1,1,0.01") == [1.0, 0.1, 0.01]
    for bad in ("0", "1.5", "x", ""):
        with pytest.raises(ValueError, match="--budgets"):
            compression.parse_budgets(bad)
    assert compression.table_for("full", 1.0, 16)[0] == {"kind": "full", "dim": 16}
    assert compression.table_for("full", 0.5, 16)[0] == {"kind": "full", "dim": 8}
    assert compression.table_for("full", 0.1, 16)[0] is None  # width 1.6 < 4
    assert compression.table_for("qr", 0.1, 16)[0] == {"kind": "qr", "dim": 16, "budget_ratio": 0.1}


def test_sweep_rows_files_and_summary(swept):
    result, out = swept
    rows = {(r["kind"], r["budget"]): r for r in result["rows"]}
    assert rows[("full", 1.0)]["status"] == "ok" and rows[("full", 1.0)]["seeds"] == 2
    assert rows[("full", 0.25)]["setting"] == "full:dim=4"
    assert rows[("full", 0.001)]["status"] == "infeasible"
    assert rows[("hashed", 0.001)]["status"] == "infeasible"  # below one row per table
    assert "smallest configuration" in rows[("hashed", 0.001)]["note"]
    for key in (("hashed", 1.0), ("hashed", 0.25)):
        r = rows[key]
        assert r["status"] == "ok" and 0 < r["bytes"] <= r["budget_bytes"]
        assert 0 <= r["auc_std"] and 0 < r["auc_mean"] <= 1
    assert rows[("full", 1.0)]["bytes"] == result["settings"]["full_bytes"] == (10 + 60) * 16 * 4
    summary = {e["budget"]: e for e in result["summary"]}
    assert summary[0.001]["best"] is None
    assert summary[0.25]["best"] in ("full", "hashed") and len(summary[0.25]["vs_runner_up"]) == 3
    low, high = summary[0.25]["vs_runner_up"][1:]
    assert low <= summary[0.25]["vs_runner_up"][0] <= high
    with (out / "compression.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and tuple(table[0]) == compression.CSV_COLUMNS
    assert (out / "compression.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "compression.json").read_text())["settings"]["seeds"] == 2
    assert "| hashed | 0.25 |" in (out / "compression.md").read_text()
    # --pairs full:hashed: both ran at budgets 1 and 0.25; at 0.25 it is best vs runner-up, up to sign
    pairs = {p["budget"]: p for p in result["pairs"]}
    assert set(pairs) == {1.0, 0.25} and {(p["a"], p["b"]) for p in pairs.values()} == {("full", "hashed")}
    sign = 1 if summary[0.25]["best"] == "hashed" else -1
    assert pairs[0.25]["b_minus_a"][0] == pytest.approx(sign * summary[0.25]["vs_runner_up"][0])
    assert "| 0.25 | hashed − full |" in (out / "compression.md").read_text()


@pytest.mark.parametrize(
    "text, match",
    [("full", r"--pairs items must be A:B"), ("full:full", r"two different kinds"), ("full:qr", r"\['qr'\] not among")],
)
def test_bad_pairs_are_refused(text, match):
    with pytest.raises(ValueError, match=match):
        compression.parse_pairs(text, ["full", "hashed"])


def test_a_failing_kind_is_reported_not_fatal(monkeypatch, capsys):
    real = compression.run_training

    def flaky(conf, **kw):
        if conf["table"]["kind"] == "hashed":
            raise RuntimeError("boom")
        return real(conf, **kw)

    monkeypatch.setattr(compression, "run_training", flaky)
    threads = torch.get_num_threads()
    try:
        compression.main(["--data", TINY, "--kinds", "full,hashed", "--budgets", "1", "--quick"])
    finally:
        torch.set_num_threads(threads)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    hashed = next(r for r in result["rows"] if r["kind"] == "hashed")
    assert hashed["status"] == "failed" and "boom" in hashed["note"]
    assert result["summary"][0]["best"] == "full"


def test_bootstrap_matches_the_plain_paired_bootstrap():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    a = np.round(labels * 0.3 + rng.random(400), 2)  # rounded: ties
    b = labels * 0.5 + rng.random(400)
    point, low, high = compression.bootstrap_auc_diff(labels, [a], [b], rounds=200)
    ref_point, ref_low, ref_high = paired_bootstrap_auc_diff(labels, a, b, rounds=200)
    assert point == pytest.approx(roc_auc_score(labels, b) - roc_auc_score(labels, a))
    assert point == pytest.approx(ref_point)
    assert low < point < high
    assert (high - low) == pytest.approx(ref_high - ref_low, rel=0.3)
    # several seeds a side: the difference of the mean AUCs
    point2, _, _ = compression.bootstrap_auc_diff(labels, [a, b], [b], rounds=10)
    assert point2 == pytest.approx(roc_auc_score(labels, b) - (roc_auc_score(labels, a) + roc_auc_score(labels, b)) / 2)


def test_weighted_auc_is_the_auc_of_repeated_rows():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 50).astype(bool)
    probs = np.round(rng.random(50), 1)
    weights = rng.integers(0, 4, 50).astype(float)
    repeated = np.repeat(np.arange(50), weights.astype(int))
    expected = roc_auc_score(labels[repeated], probs[repeated])
    ranked = compression._ranked(probs, labels)
    assert compression._weighted_auc(ranked, weights, labels) == pytest.approx(expected)


def test_a_budget_refused_in_training_is_infeasible(monkeypatch):
    def refuse(conf, **kw):
        raise ValueError("OptEmbed: budget_ratio=0.1 (62688 bytes) cannot hold the rows the supernet kept")

    monkeypatch.setattr(compression, "run_training", refuse)
    threads = torch.get_num_threads()
    try:
        result = compression.run(parse(["--data", TINY, "--kinds", "hashed", "--budgets", "0.5", "--quick"]))
    finally:
        torch.set_num_threads(threads)
    assert result["rows"][0]["status"] == "infeasible" and "cannot hold" in result["rows"][0]["note"]


def test_rewrite_redraws_the_files_from_the_json(swept):
    result, out = swept
    (out / "compression.png").unlink()
    (out / "compression.csv").unlink()
    again = compression.rewrite(out)
    assert again["rows"] == json.loads(json.dumps(result["rows"]))
    assert (out / "compression.png").read_bytes()[:4] == b"\x89PNG" and (out / "compression.csv").exists()
    cells = compression.cells_from_result(again)
    assert [c.bytes for c in cells if c.runs] == [r["bytes"] for r in result["rows"] if r["status"] == "ok"]
    assert [c.mean("auc") for c in cells if c.runs] == [r["auc_mean"] for r in result["rows"] if r["status"] == "ok"]


@pytest.mark.slow
def test_jobs_2_gives_the_results_of_jobs_1(swept, tmp_path):
    """The same sweep in 2 worker processes: the same cells, per-seed metrics and intervals,
    in the same order (only the throughput differs)."""
    result, _ = swept
    threads = torch.get_num_threads()
    try:
        parallel = compression.run(parse([*SWEEP, "--jobs", "2", "--out", str(tmp_path)]))
    finally:
        torch.set_num_threads(threads)

    def metrics(res):
        rows = [{k: v for k, v in r.items() if k != "samples_per_s"} for r in res["rows"]]
        runs = [(r["kind"], r["budget"], r["seed"], r["auc"], r["logloss"], r["valid_auc"]) for r in res["runs"]]
        return rows, runs, res["summary"]

    assert parallel["settings"]["jobs"] == 2
    assert metrics(parallel) == metrics(result)
    assert len(parallel["runs"]) == 8  # full and hashed at 1 and 0.25, two seeds each


def test_run_tasks_in_order_in_workers_and_skipped():
    tasks = [1, 2, 3, 4]
    assert list(parallel_runs.run_tasks(operator.add, 10, tasks)) == [(0, 11), (1, 12), (2, 13), (3, 14)]
    assert list(parallel_runs.run_tasks(operator.add, 10, tasks, skip=lambda i: i % 2 == 1)) == [(0, 11), (2, 13)]
    assert sorted(parallel_runs.run_tasks(operator.add, 10, tasks, jobs=2)) == [(0, 11), (1, 12), (2, 13), (3, 14)]
    with pytest.raises(ValueError, match="jobs"):
        list(parallel_runs.run_tasks(operator.add, 10, tasks, jobs=0))
