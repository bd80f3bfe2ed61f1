"""`recemb bench distributed`: training throughput sharded over N processes vs 1, at the
same global batch.

AutoInt on synthetic data, for each table (default `full:dim=16` and
`unified:dim=16,budget_ratio=0.1`), one epoch each of:

    tbe               `recemb train` in this process: the fused TBE store, cores threads
    tbe_1x1           the same with 1 thread
    torchrec_1        `launch_training` with 1 process (sharded over 1 rank), cores threads
    torchrec_1x1      the same with 1 thread
    torchrec_N        N processes, cores / N threads each

samples/s is each run's own (training epochs only: no start-up, no evaluation); repeats
are interleaved and the best counts. With fewer cores than processes × threads the
processes share cores, so on a small machine the ratio measures overheads, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import torch

from recemb.config import parse_settings
from recemb.distributed.launch import launch_training
from recemb.run import run_training

TABLES = ("full:dim=16", "unified:dim=16,budget_ratio=0.1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tables", default=";".join(TABLES), help="table settings separated by ';'")
    parser.add_argument("--rows", type=int, default=60_000, help="synthetic rows (70%% train)")
    parser.add_argument("--batch-size", type=int, default=1024, help="global batch")
    parser.add_argument("--nproc", type=int, default=2, help="processes to compare with 1")
    parser.add_argument("--plan", default="auto", help="sharding plan of the distributed runs")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant, interleaved; the best counts")


def _conf(table: str, rows: int, batch_size: int) -> dict[str, Any]:
    kind, _, settings = table.partition(":")
    return {
        "data": f"synthetic:rows={rows}",
        "table": {"kind": kind, **parse_settings(settings)},
        "model": {"name": "autoint"},
        "train": {"epochs": 1, "batch_size": batch_size},
    }


def _distributed(conf: dict[str, Any], nproc: int, plan: str, threads: int) -> dict[str, Any]:
    done = launch_training(conf, nproc=nproc, plan=plan, capture=True, threads=threads)
    if done.returncode:  # type: ignore[union-attr]
        raise RuntimeError(f"{nproc}-process run failed:\n{done.stderr[-3000:]}")  # type: ignore[union-attr]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[union-attr]


def run(args: argparse.Namespace) -> dict[str, Any]:
    threads = torch.get_num_threads()
    cores = os.cpu_count() or 1
    out: dict[str, Any] = {"cores": cores, "global_batch": args.batch_size, "rows": args.rows, "nproc": args.nproc,
                           "plan": args.plan, "load_average": os.getloadavg()[0], "results": {}}  # fmt: skip
    n = f"torchrec_{args.nproc}"
    for table in args.tables.split(";"):
        conf = _conf(table, args.rows, args.batch_size)
        runs: dict[str, list[dict[str, Any]]] = {"tbe": [], "tbe_1x1": [], "torchrec_1": [], "torchrec_1x1": [], n: []}
        for _ in range(args.repeats):  # interleaved, so a busy spell hurts every variant alike
            for key, count in (("tbe", cores), ("tbe_1x1", 1)):
                torch.set_num_threads(count)
                runs[key].append(run_training(conf).metrics)
            runs["torchrec_1"].append(_distributed(conf, 1, args.plan, cores))
            runs["torchrec_1x1"].append(_distributed(conf, 1, args.plan, 1))
            runs[n].append(_distributed(conf, args.nproc, args.plan, max(1, cores // args.nproc)))
        best = {k: max(m["samples_per_s"] for m in v) for k, v in runs.items()}
        out["results"][table] = {
            "samples_per_s": best,
            f"ratio_{args.nproc}_vs_1": best[n] / best["torchrec_1"],
            "all_samples_per_s": {k: [m["samples_per_s"] for m in v] for k, v in runs.items()},
            "test_auc": {k: v[0]["auc"] for k, v in runs.items()},
        }
    out["load_average_after"] = os.getloadavg()[0]
    torch.set_num_threads(threads)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    print(json.dumps(run(parser.parse_args()), indent=1))
