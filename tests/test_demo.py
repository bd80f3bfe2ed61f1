"""`make demo`'s comparison: each default table is trained and compared on the same test rows."""

from __future__ import annotations

import math

from recemb import native
from recemb.cli import DEMO_TABLES
from recemb.demo import run_demo


def test_demo_trains_each_table_and_compares_on_the_same_rows(capsys):
    tables = ["full:dim=8", "unified:dim=8,budget_ratio=0.1"]
    result = run_demo(tables, rows=3_000, epochs=1)
    rows = {row["table"]: row for row in result["demo"]}
    assert list(rows) == tables
    assert rows["full:dim=8"]["auc_diff_vs_first"] is None
    diff, low, high = rows["unified:dim=8,budget_ratio=0.1"]["auc_diff_vs_first"]
    assert low <= diff <= high
    assert rows["unified:dim=8,budget_ratio=0.1"]["table_bytes"] <= 0.1 * rows["full:dim=8"]["table_bytes"]
    assert all(0.0 < row["auc"] < 1.0 and row["samples_per_s"] > 0 and math.isfinite(row["logloss"]) for row in rows.values())
    assert "unified:dim=8,budget_ratio=0.1" in capsys.readouterr().out  # the long name is printed whole


def test_default_demo_compares_full_with_compressed_kinds():
    kinds = [table.partition(":")[0] for table in DEMO_TABLES]
    assert kinds[0] == "full" and {"hashed", "unified"} <= set(kinds)


def test_load_all_names_every_kernel_source():
    assert set(native.load_all()) == {source.stem for source in native.SOURCES.glob("*.cpp")}
