"""`recemb bench pruning` on a tiny synthetic set: one row per run, a summary per kind with the
compression and the paired AUC difference against full."""

from __future__ import annotations

import argparse
import json

from recemb.bench import pruning


def test_bench_pruning_reports_each_kind(tmp_path):
    parser = argparse.ArgumentParser()
    pruning.add_arguments(parser)
    out = tmp_path / "rows.jsonl"
    args = parser.parse_args(
        [
            "--dataset", "tiny=synthetic:rows=1200,cardinalities=30;400,multi_hot=0,sequences=0",
            "--kinds", "full,mixed_dim", "--seeds", "1", "--dim", "16", "--ratio", "0.5", "--epochs", "1",
            "--out", str(out),
        ]
    )  # fmt: skip
    report = pruning.run(args)
    kinds = report["datasets"]["tiny"]["kinds"]
    assert set(kinds) == {"full", "mixed_dim"}
    assert kinds["mixed_dim"]["compression"] >= 2 and kinds["full"]["compression"] == 1
    assert "auc_diff_vs_full" in kinds["mixed_dim"] and len(kinds["mixed_dim"]["auc_diff_per_seed"]) == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["full", "mixed_dim"]
