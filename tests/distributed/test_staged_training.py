"""Staged kinds sharded (`recemb train --nproc 2`): OptEmbed's three stages (supernet, search,
retrain) each train sharded over 2 CPU processes through torchrun and end where one process
ends: the same JSON line, the same kept rows and searched widths, the same scores, and a
model.pt that `recemb export` reads into the model one process trains. DNIS and resuming a
staged run are refused before any process starts.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from recemb.data import load_dataset
from recemb.distributed.launch import launch_training
from recemb.export import export_run, load_trained
from recemb.run import run_training
from recemb.train import predict

pytestmark = pytest.mark.dist

# thresholds near the rows' initial L1 norms (16 columns of std 0.01: about 0.13) and a slow
# threshold Adam, so the supernet prunes some rows; a budget that makes the search choose
CONF = {
    "data": "synthetic:rows=1200,cardinalities=20;60;300,multi_hot=0,sequences=0,seed=3",
    "table": {
        "kind": "optembed",
        "dim": 16,
        "threshold_init": 0.13,
        "threshold_lr": 0.001,
        "budget_ratio": 0.5,
        "generations": 3,
        "keep": 3,
        "mutations": 3,
        "crossovers": 3,
    },
    "model": {"name": "autoint", "layers": 1, "attention_dim": 8},
    "train": {"epochs": 1, "batch_size": 128},  # 840 training rows: every global batch splits evenly
    # column-wise splits each 16-wide table over both ranks (the kept rows come from summed
    # partial row norms); Adagrad, since row-wise Adagrad differs by design on split columns
    "store": {"optimizer": {"name": "adagrad", "lr": 0.05}},
}
TIMING = {"samples_per_s", "train_seconds"}


def without_timing(d: dict) -> dict:
    return {k: without_timing(v) if isinstance(v, dict) else v for k, v in d.items() if k not in TIMING}


def assert_same_scores(got: dict, expected: dict, where: str) -> None:
    """Equal, with scores (floats) to 1e-4: the sharded forward sums in another order."""
    assert got.keys() == expected.keys(), (where, sorted(got), sorted(expected))
    for k, v in expected.items():
        if isinstance(v, dict):
            assert_same_scores(got[k], v, f"{where}.{k}")
        elif isinstance(v, float):
            assert got[k] == pytest.approx(v, abs=1e-4), f"{where}.{k}: {got[k]} != {v}"
        else:
            assert got[k] == v, f"{where}.{k}: {got[k]} != {v}"


def test_optembed_stages_run_sharded_and_end_where_one_process_ends(tmp_path):
    out = tmp_path / "run"
    done = launch_training(CONF, out, nproc=2, plan="column_wise", capture=True)
    assert done.returncode == 0, done.stderr[-3000:]  # type: ignore[union-attr]
    metrics = json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[union-attr]
    single = run_training(CONF, tmp_path / "single").metrics

    assert set(metrics) == set(single)  # the JSON line of a single-process run, stages included
    assert list(metrics["stages"]) == ["supernet", "search", "retrain"]
    supernet, search = metrics["stages"]["supernet"], metrics["stages"]["search"]
    assert 0 < supernet["kept_rows"] < supernet["rows"], "the supernet pruned rows"
    assert search["candidates"] > 1 and len(set(search["widths"].values())) > 1, "the search chose"
    assert_same_scores(without_timing(metrics), without_timing(single), "metrics")

    record = json.loads((out / "run.json").read_text())
    assert record["distributed"]["world_size"] == 2 and record["metrics"]["stages"] == metrics["stages"]
    tables = {t["table"]: t for t in record["distributed"]["tables"]}  # the retrained tables' plan
    assert set(tables) == {"C1", "C2", "C3"}
    for name, width in search["widths"].items():
        assert sum(s["sizes"][1] for s in tables[name]["shards"]) == width

    # model.pt: the sharded run's trained model is the one process's, and exports
    test = load_dataset(CONF["data"], tuple(record["config"]["split"])).test
    (sharded, _), (one, _) = load_trained(out), load_trained(tmp_path / "single")
    np.testing.assert_allclose(predict(sharded, test), predict(one, test), atol=1e-4)
    assert export_run(out, tmp_path / "sharded.pt", check=True)["max_abs_prob_diff"] < 1e-5


@pytest.mark.parametrize(
    "table, resume, match",
    [
        ({"kind": "dnis"}, False, r"table kind 'dnis' trains in stages that cannot run sharded: its prune stage"),
        ({"kind": "optembed"}, True, r"resume is not supported for table kind 'optembed'"),
    ],
)
def test_what_cannot_run_sharded_is_refused_before_any_process_starts(tmp_path, table, resume, match):
    with pytest.raises(ValueError, match=match):
        launch_training({**CONF, "table": table}, tmp_path, nproc=2, resume=resume)
