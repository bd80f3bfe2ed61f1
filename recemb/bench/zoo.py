"""`recemb bench zoo`: train every config of the model zoo (models/*.yaml) and regenerate the
results table of models/README.md.

Each config is one model on one dataset (`<model>_<dataset>.yaml`); it is trained as
`recemb train --config FILE` would, and its test AUC, log loss, table bytes and training
samples/s go into models/results.json together with the seed, the epochs, the date and the
environment (Python, torch, fbgemm, torchrec, threads). The table in models/README.md,
between the markers below, is then rewritten from results.json, so a run of a few configs
(--filter) updates their rows and keeps the others. Data paths in the configs are relative
to the repository root: run it from there. samples/s is measured on whatever machine runs
it (one thread by default), so compare it within one table only.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from recemb.config import load_config_file
from recemb.data import DataSplits, load_dataset
from recemb.run import DEFAULTS, environment, merge_config, run_training

START, END = "<!-- zoo results: start (written by `recemb bench zoo`) -->", "<!-- zoo results: end -->"
RESULTS = "results.json"
README = "README.md"


def find_configs(folder: Path, patterns: list[str]) -> list[Path]:
    """The folder's *.yaml / *.toml configs whose stem matches any of the fnmatch patterns."""
    if not folder.is_dir():
        raise FileNotFoundError(f"zoo folder {str(folder)!r} does not exist (run from the repository root?)")
    configs = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml", ".toml"))
    chosen = [p for p in configs if any(fnmatch.fnmatch(p.stem, pat) for pat in patterns)]
    if not chosen:
        raise ValueError(f"no config in {folder} matches {patterns}; configs: {[p.stem for p in configs]}")
    return chosen


def run_config(path: Path, cache: dict[tuple, DataSplits], epochs: int | None) -> dict[str, Any]:
    """Train one config; its results row (the data of a dataset is read once per run)."""
    conf = merge_config(DEFAULTS, load_config_file(path))
    if epochs is not None:
        conf["train"] = {**conf["train"], "epochs": epochs}
    key = (conf["data"], tuple(conf["split"]))
    if key not in cache:
        cache[key] = load_dataset(conf["data"], tuple(conf["split"]))
    started = time.perf_counter()
    metrics = run_training(conf, data=cache[key]).metrics
    return {
        "config": path.stem,
        "model": conf["model"]["name"],
        "dataset": conf["data"].split(":")[0],
        "data": conf["data"],
        "table": conf["table"],
        "auc": metrics["auc"],
        "logloss": metrics["logloss"],
        "auc_se": metrics["auc_se"],
        "table_bytes": metrics["table_bytes"],
        "samples_per_s": metrics["samples_per_s"],
        "best_epoch": metrics["best_epoch"],
        "epochs": conf["train"].get("epochs", 1),
        "seed": conf["train"].get("seed", 0),
        "test_rows": metrics["test_rows"],
        "seconds": time.perf_counter() - started,
        "finished": time.strftime("%Y-%m-%d %H:%M"),
        "environment": environment(),
    }


def load_results(path: Path) -> dict[str, dict[str, Any]]:
    return json.loads(path.read_text())["results"] if path.exists() else {}


def write_results(path: Path, results: dict[str, dict[str, Any]]) -> None:
    ordered = dict(sorted(results.items()))
    path.write_text(json.dumps(_finite({"results": ordered}), indent=2, default=str) + "\n")


def _finite(value: Any) -> Any:
    """NaN (an AUC of one-class labels) -> None, for JSON; other odd values as text."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def results_table(results: dict[str, dict[str, Any]]) -> str:
    """The markdown table of every result, by dataset then model, and its environment."""
    rows = sorted(results.values(), key=lambda r: (r["dataset"], r["model"]))
    lines = [
        "| dataset | model | config | test AUC | log loss | table bytes | samples/s | epochs (best) | seed "
        "| test rows |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['model']} | [{r['config']}]({r['config']}.yaml) | {_num(r['auc'], '.4f')} "
            f"| {_num(r['logloss'], '.4f')} | {r['table_bytes']:,} | {_num(r['samples_per_s'], ',.0f')} "
            f"| {r['epochs']} ({r['best_epoch']}) | {r['seed']} | {r['test_rows']:,} |"
        )
    envs = {json.dumps(r["environment"], sort_keys=True) for r in rows}
    dates = sorted(r["finished"] for r in rows)
    lines.append("")
    for env in sorted(envs):
        e = json.loads(env)
        lines.append(
            f"Environment: Python {e.get('python')}, torch {e.get('torch')}, fbgemm_gpu {e.get('fbgemm_gpu')}, "
            f"torchrec {e.get('torchrec')}, {e.get('machine')}, {e.get('threads')} thread(s)."
        )
    if dates:
        lines.append(
            f"Runs finished {dates[0]} to {dates[-1]}. Regenerate: `recemb bench zoo` from the repository root."
        )
    return "\n".join(lines)


def _num(value: Any, spec: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def update_readme(path: Path, table: str) -> None:
    """Replace the text between the markers (appended, with the markers, when missing)."""
    text = path.read_text() if path.exists() else "# Model zoo\n"
    block = f"{START}\n{table}\n{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--zoo", default="models", help="folder of the configs, results.json and README.md (default models)"
    )
    parser.add_argument(
        "--filter", default="*", help="comma-separated patterns of config names, e.g. 'autoint_*,*_frappe'"
    )
    parser.add_argument("--epochs", type=int, help="override every config's epochs (smoke runs; not for the table)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--dry-run", action="store_true", help="list the configs that would run, and stop")
    parser.add_argument(
        "--no-write", action="store_true", help="print the results; leave results.json and README.md alone"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train the chosen configs, update results.json and README.md, print the table."""
    if args.threads < 1 or (args.epochs is not None and args.epochs < 1):
        raise ValueError("--threads and --epochs must be >= 1")
    folder = Path(args.zoo)
    configs = find_configs(folder, [p.strip() for p in args.filter.split(",") if p.strip()])
    if args.dry_run:
        print("\n".join(str(p) for p in configs))
        return {"benchmark": "zoo", "configs": [p.stem for p in configs], "results": {}}
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    cache: dict[tuple, DataSplits] = {}
    new: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    try:
        for i, path in enumerate(configs, 1):
            print(f"[{i}/{len(configs)}] {path.stem}", file=sys.stderr, flush=True)
            try:
                new[path.stem] = run_config(path, cache, args.epochs)
            except Exception as e:  # one broken config must not lose the others' results
                failed[path.stem] = f"{type(e).__name__}: {e}"
                print(f"    failed: {failed[path.stem]}", file=sys.stderr, flush=True)
                continue
            r = new[path.stem]
            line = f"    AUC {r['auc']:.4f}, log loss {r['logloss']:.4f}, {r['seconds']:.0f} s"
            print(line, file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(threads)
    results_path = folder / RESULTS
    if args.no_write or args.epochs is not None:
        table = results_table(new)
    else:
        merged = {**load_results(results_path), **new}
        write_results(results_path, merged)
        table = results_table(merged)
        update_readme(folder / README, table)
    print(table)
    if failed:
        print(f"\nfailed: {failed}")
    return _finite({"benchmark": "zoo", "configs": [p.stem for p in configs], "results": new, "failed": failed})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m recemb.bench.zoo", description=__doc__.splitlines()[0])
    add_arguments(parser)
    result = run(parser.parse_args(argv))
    print(json.dumps(_finite(result), default=str))
    return result


if __name__ == "__main__":
    main()
