"""`recemb bench pruning`: AutoInt with full vs optembed vs mixed_dim vs dnis at >= 5x fewer
bytes than full, on real data, over seeds.

Each (dataset, seed) trains full at --dim, then each compressed kind with budget_ratio
--ratio (bytes of the exported fp32 tables, remaps and output maps included, against full's
table bytes), exports it, and scores the test rows. Reported per dataset and kind: AUC and
log loss (mean and sd over seeds), export bytes (fp32 and int8) and the compression against
full, training samples/s (the last stage's), and the AUC difference against full on the
same test rows with a paired bootstrap 95% interval per seed
(recemb.metrics.paired_bootstrap_auc_diff). Results are appended to --out as they come
(JSON lines), so a long run can be read while it goes.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from recemb import metrics
from recemb.data import load_dataset

log = logging.getLogger(__name__)

DATASETS = {
    "criteo": "criteo:../shared/data/criteo/kaggle_train_first10k.tsv",
    "frappe": "frappe:../shared/data/frappe",  # validation file -> train + valid, test file -> test
}
KINDS: tuple[str, ...] = ("full", "optembed", "mixed_dim", "dnis")


def table_config(kind: str, dim: int, ratio: float, extra: dict[str, Any]) -> dict[str, Any]:
    if kind == "full":
        return {"kind": "full", "dim": dim}
    return {"kind": kind, "dim": dim, "budget_ratio": ratio, **extra.get(kind, {})}


def run_one(spec: str, data: Any, kind: str, seed: int, args: argparse.Namespace, extra: dict) -> dict[str, Any]:
    from recemb.export import export_run
    from recemb.run import run_training

    conf = {
        "data": spec,
        "table": table_config(kind, args.dim, args.ratio, extra),
        "model": {"name": "autoint"},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "seed": seed, "patience": args.patience},
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_training(conf, out_dir=tmp, data=data)
        m = result.metrics
        row: dict[str, Any] = {
            "kind": kind,
            "seed": seed,
            "auc": m["auc"],
            "logloss": m["logloss"],
            "samples_per_s": m["samples_per_s"],
            "table_bytes": m["table_bytes"],
        }
        if kind == "full":
            row["export_bytes"] = row["export_int8_bytes"] = m["table_bytes"]
        else:
            row["export_bytes"] = export_run(tmp, Path(tmp) / "e.pt")["tables_bytes"]
            row["export_int8_bytes"] = export_run(tmp, Path(tmp) / "e8.pt", int8=True)["tables_bytes"]
        if "stages" in m:
            row["stages"] = {k: {kk: v[kk] for kk in ("auc", "bytes")} for k, v in m["stages"].items()}
    row["seconds"] = time.perf_counter() - start
    row["probs"] = result.test_probs
    row["labels"] = result.test_labels
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per kind: means over seeds, and the paired differences against full's run of the same seed."""
    full = {r["seed"]: r for r in rows if r["kind"] == "full"}
    out = {}
    for kind in dict.fromkeys(r["kind"] for r in rows):
        mine = [r for r in rows if r["kind"] == kind]
        aucs = [r["auc"] for r in mine]
        entry: dict[str, Any] = {
            "seeds": len(mine),
            "auc": statistics.mean(aucs),
            "auc_sd": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
            "logloss": statistics.mean(r["logloss"] for r in mine),
            "export_bytes": statistics.mean(r["export_bytes"] for r in mine),
            "export_int8_bytes": statistics.mean(r["export_int8_bytes"] for r in mine),
            "samples_per_s": statistics.mean(r["samples_per_s"] for r in mine),
        }
        if full:
            full_bytes = statistics.mean(r["export_bytes"] for r in full.values())
            entry["compression"] = full_bytes / entry["export_bytes"]
            entry["compression_int8"] = full_bytes / entry["export_int8_bytes"]
        if kind != "full":
            diffs = []
            for r in mine:
                if r["seed"] in full:
                    f = full[r["seed"]]
                    point, low, high = metrics.paired_bootstrap_auc_diff(
                        f["labels"], f["probs"], r["probs"], rounds=500, seed=r["seed"]
                    )
                    diffs.append({"seed": r["seed"], "diff": point, "low": low, "high": high})
            if diffs:
                entry["auc_diff_vs_full"] = statistics.mean(d["diff"] for d in diffs)
                entry["auc_diff_per_seed"] = diffs
        out[kind] = entry
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        action="append",
        help="criteo, frappe, or NAME=SPEC (any --data spec); repeat for several (default: criteo and frappe)",
    )
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--dim", type=int, default=32, help="full's width, and the compressed kinds' model width")
    parser.add_argument("--ratio", type=float, default=0.2, help="budget_ratio of the compressed kinds (0.2: 5x)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--extra", default="{}", help='JSON of per-kind settings, e.g. {"optembed": {"threshold_lr": 0.01}}'
    )
    parser.add_argument("--out", help="JSON lines file the results are appended to")


def run(args: argparse.Namespace) -> dict[str, Any]:
    extra = json.loads(args.extra)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"--kinds {unknown} are not among {list(KINDS)}")
    report: dict[str, Any] = {"dim": args.dim, "ratio": args.ratio, "epochs": args.epochs, "datasets": {}}
    for name in args.dataset or list(DATASETS):
        name, _, spec = name.partition("=")
        spec = spec or DATASETS[name]
        data = load_dataset(spec)
        rows = []
        for seed in range(args.seeds):
            for kind in kinds:
                row = run_one(spec, data, kind, seed, args, extra)
                rows.append(row)
                printable = {k: v for k, v in row.items() if not isinstance(v, np.ndarray)}
                log.info("%s %s", name, printable)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps({"dataset": name, **printable}) + "\n")
        report["datasets"][name] = {"test_rows": len(data.test), "kinds": summarize(rows)}
    return report
