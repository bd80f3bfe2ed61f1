"""`launch_training` (what `recemb train --nproc N` runs): torchrun, 2 processes on CPU/gloo,
the plan printed and saved, memory per rank, the same metrics line as a single-process run.
(Resuming, on 1 or 2 ranks, is tested inside one process group in test_sharded_training.)"""

from __future__ import annotations

import json

import pytest

from recemb.distributed.launch import launch_training
from recemb.run import run_training

pytestmark = pytest.mark.dist

CONF = {
    "data": "synthetic:rows=1500,cardinalities=10;100;1000,sequence_max_len=4",
    "table": {"kind": "unified", "dim": 16},
    "model": {"name": "autoint", "layers": 1},
    "train": {"epochs": 1, "batch_size": 128},
}


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_launch_trains_on_2_processes(tmp_path, capfd):
    out = tmp_path / "run"
    assert launch_training(CONF, out, nproc=2) == 0
    stdout = capfd.readouterr().out
    metrics = last_json(stdout)
    single = run_training(CONF).metrics
    assert set(metrics) == set(single)  # the same JSON line as a single-process run
    assert metrics["kind"] == "unified" and 0 < metrics["auc"] < 1 and metrics["samples_per_s"] > 0
    assert metrics["table_params"] == single["table_params"]
    assert "sharding type" in stdout and "peak_rss" in stdout  # the plan and memory per rank, printed

    record = json.loads((out / "run.json").read_text())
    dist = record["distributed"]
    assert dist["world_size"] == 2 and dist["backend"] == "gloo"
    assert [r["rank"] for r in dist["ranks"]] == [0, 1]
    assert all(r["table_bytes"] > 0 and r["peak_rss_bytes"] > 0 for r in dist["ranks"])
    assert {t["table"] for t in dist["tables"]} == {"unified"}
    assert record["resolved"]["store"]["backend"] == "torchrec"
    assert "sharding type" in (out / "plan.txt").read_text()
    assert len(record["history"]) == 1
