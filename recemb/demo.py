"""`make demo`: AutoInt on the built-in synthetic data with several table settings, compared
on the same test rows (paired bootstrap interval on the AUC difference)."""

from __future__ import annotations

from typing import Any

from recemb.config import parse_settings
from recemb.data import DataSplits
from recemb.data.synthetic import SyntheticConfig, bayes_auc, generate_with_truth
from recemb.metrics import paired_bootstrap_auc_diff
from recemb.run import run_training

SPLIT = (0.7, 0.1, 0.2)


def run_demo(tables: list[str], rows: int = 60_000, epochs: int = 2, seed: int = 0) -> dict[str, Any]:
    """Train once per table setting on one dataset; print a comparison table (a CLI
    entry point, so it prints) and return the rows of that table."""
    data, truth = generate_with_truth(SyntheticConfig(rows=rows, seed=seed))
    splits = DataSplits(*data.split(SPLIT))
    test_truth = truth[len(data) - len(splits.test) :]  # the split is in row order
    ceiling = bayes_auc(splits.test.labels, test_truth)
    results = []
    for table in tables:
        kind, _, settings = table.partition(":")
        conf = {"table": {"kind": kind, **parse_settings(settings)}, "train": {"epochs": epochs, "seed": seed}}
        results.append((table, run_training(conf, data=splits)))
    base = results[0][1]
    print(f"\nAutoInt on synthetic data: {rows} rows, test {len(base.test_labels)} rows, {epochs} epochs; "
          f"Bayes-optimal test AUC {ceiling:.4f}\n")
    width = max(28, *(len(table) for table in tables))
    header = f"{'table':{width}s} {'AUC':>7s} {'±se':>6s} {'logloss':>8s} {'bytes':>12s} {'samples/s':>10s}  ΔAUC vs first [95% CI]"
    print(header)
    print("-" * len(header))
    rows_out = []
    for table, r in results:
        m = r.metrics
        diff, low, high = paired_bootstrap_auc_diff(base.test_labels, base.test_probs, r.test_probs, rounds=300)
        delta = "—" if r is base else f"{diff:+.4f} [{low:+.4f}, {high:+.4f}]"
        print(f"{table:{width}s} {m['auc']:7.4f} {m['auc_se']:6.4f} {m['logloss']:8.4f} {m['table_bytes']:12,d} "
              f"{m['samples_per_s']:10.0f}  {delta}")
        rows_out.append({"table": table, **{k: m[k] for k in ("auc", "logloss", "table_bytes", "samples_per_s")},
                         "auc_diff_vs_first": None if r is base else [diff, low, high]})
    print()
    return {"demo": rows_out, "bayes_auc": ceiling}
