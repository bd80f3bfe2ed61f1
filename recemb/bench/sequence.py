"""`recemb bench sequence`: target attention on the Amazon Video Games sequences, quality of
DIN, TWIN-style and DARE, and the cost of DARE's search stage at two attention widths.

Quality. The Amazon reader's samples (history of at most --max-len items, target, label;
2 popularity negatives per positive; leave-last-out test), one data set for every run.
Variants, each trained --seeds times (train and table-init seed = 0, 1, ...):

    din          DIN over a full table of width D
    twin         TWIN-style two-stage attention over a full table of width D
    dare_1table  DARE over a full table of width D: both roles from one embedding
                 (the paper's single-table baseline)
    dare         DARE over a decoupled table: attention full:dim=D/2, representation full:dim=D
    dare_wide    DARE over a decoupled table: attention full:dim=D, representation full:dim=D

Test AUC and GAUC (by user) per run, their mean and standard deviation over seeds, and
per seed the AUC difference dare - dare_1table (and dare - twin) with its 95% paired
bootstrap interval on the same test rows (metrics.paired_bootstrap_auc_diff).

Speed. The search stage alone, without autograd, timed two ways: `lookup+search` looks
the target and the history up in an attention table (TBE store, one fused call), scores
every history item against the target and keeps the top k; `search` is the scoring and
top-k alone on vectors looked up beforehand. Each at attention width D and D/2 (for every
D of --search-dims; D = --dim is the trained models' width), the variants taking turns in
rounds (bench.timing.time_interleaved), one thread, warm-up then the median process CPU
time; on the test batches (histories of at most --max-len) and on synthetic full
histories of --long-len items drawn by popularity, closer to the paper's long sequences.
The ratio D/2 : D is what the README reports (the paper: about 0.5).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.bench.timing import time_interleaved
from recemb.data import DataSplits, load_dataset
from recemb.metrics import paired_bootstrap_auc_diff
from recemb.models.dare import search
from recemb.storage import StoreSettings
from recemb.tables import Full, build_embedding

log = logging.getLogger(__name__)

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "amazon_video_games_seq"
VARIANTS: tuple[str, ...] = ("din", "twin", "dare_1table", "dare", "dare_wide")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="the SASRec-layout file or its folder")
    parser.add_argument("--max-rows", type=int, default=None, help="read only the first N interactions")
    parser.add_argument("--max-len", type=int, default=50, help="history length kept (default 50)")
    parser.add_argument("--dim", type=int, default=16, help="representation width D (default 16, a multiple of 8)")
    parser.add_argument("--k", type=int, default=20, help="history items the search keeps (default 20)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per variant (default 3)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (default 3; validation AUC still rises at 3)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    parser.add_argument("--skip-quality", action="store_true", help="time the search stage only")
    parser.add_argument("--search-dims", default="16,64", help="widths D whose search is timed at D and D/2")
    parser.add_argument("--search-batches", type=int, default=8, help="test batches cycled in the timing")
    parser.add_argument("--long-len", type=int, default=1000, help="synthetic history length for the timing (0: none)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap rounds of the AUC differences")


def run(args: argparse.Namespace) -> dict:
    """Train the variants, time the search, print a table, return the results."""
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    if args.dim % 8:
        raise ValueError(f"--dim must be a multiple of 8 (D/2 a multiple of the TBE store's 4), got {args.dim}")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        spec = f"amazon:{args.data}?max_len={args.max_len}" + (f",max_rows={args.max_rows}" if args.max_rows else "")
        data = load_dataset(spec)
        result: dict[str, Any] = {
            "settings": {
                "data": spec, "rows": data.report["rows"], "test_rows": len(data.test), "dim": args.dim,
                "k": args.k, "seeds": args.seeds, "epochs": args.epochs, "batch_size": args.batch_size,
                "threads": args.threads, "repeats": args.repeats, "long_len": args.long_len,
                "search_dims": args.search_dims,
            }
        }  # fmt: skip
        if not args.skip_quality:
            result["quality"] = quality(data, variants, args)
        result["search"] = search_speed(data, args)
    finally:
        torch.set_num_threads(threads)
    _print(result)
    return result


# -- quality -----------------------------------------------------------------------------------


def variant_config(name: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    d = args.dim
    tables = {
        "din": {"kind": "full", "dim": d},
        "twin": {"kind": "full", "dim": d},
        "dare_1table": {"kind": "full", "dim": d},
        "dare": {"kind": "decoupled", "attention": f"full:dim={d // 2}", "representation": f"full:dim={d}"},
        "dare_wide": {"kind": "decoupled", "attention": f"full:dim={d}", "representation": f"full:dim={d}"},
    }
    model = {"din": {"name": "din"}, "twin": {"name": "twin", "k": args.k}}.get(name, {"name": "dare", "k": args.k})
    return {
        "data": "amazon (loaded once)",
        "table": tables[name],
        "model": model,
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "seed": seed},
    }


def quality(data: DataSplits, variants: list[str], args: argparse.Namespace) -> dict[str, Any]:
    from recemb.run import run_training

    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    probs: dict[tuple[str, int], np.ndarray] = {}
    labels = data.test.labels.numpy()
    for seed in range(args.seeds):
        for v in variants:
            start = time.perf_counter()
            out = run_training(variant_config(v, args, seed), data=data)
            m = out.metrics
            runs[v].append({"seed": seed, "auc": m["auc"], "gauc": m["gauc"], "logloss": m["logloss"],
                            "table_params": m["table_params"], "seconds": time.perf_counter() - start})  # fmt: skip
            probs[v, seed] = out.test_probs
            log.info("%s seed %d: auc %.4f gauc %.4f", v, seed, m["auc"], m["gauc"])
    summary = {}
    for v, rs in runs.items():
        summary[v] = {"runs": rs, "table_params": rs[0]["table_params"]}
        for metric in ("auc", "gauc", "logloss"):
            values = [r[metric] for r in rs]
            summary[v][f"{metric}_mean"] = float(np.mean(values))
            summary[v][f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    comparisons = {}
    for a, b in (("dare_1table", "dare"), ("twin", "dare"), ("dare_1table", "dare_wide"), ("dare_wide", "dare")):
        if a in runs and b in runs:
            per_seed = []
            for seed in range(args.seeds):
                diff, low, high = paired_bootstrap_auc_diff(
                    labels, probs[a, seed], probs[b, seed], args.bootstrap, seed
                )
                gauc_diff = runs[b][seed]["gauc"] - runs[a][seed]["gauc"]
                per_seed.append({"seed": seed, "auc_diff": diff, "low": low, "high": high, "gauc_diff": gauc_diff})
            comparisons[f"{b}_vs_{a}"] = {
                "per_seed": per_seed,
                "auc_diff_mean": float(np.mean([p["auc_diff"] for p in per_seed])),
                "gauc_diff_mean": float(np.mean([p["gauc_diff"] for p in per_seed])),
            }
    return {"variants": summary, "comparisons": comparisons}


# -- search speed ------------------------------------------------------------------------------


def _test_batches(data: DataSplits, batch: int, count: int) -> list[KeyedJaggedTensor]:
    rows = torch.arange(len(data.test))
    count = max(1, min(count, len(data.test) // batch))  # a test part smaller than a batch: one batch
    return [data.test.batch(rows[i * batch : (i + 1) * batch]).sparse for i in range(count)]


def _long_batches(data: DataSplits, batch: int, count: int, length: int) -> list[KeyedJaggedTensor]:
    """Full histories of `length` items drawn by training popularity (fixed seed)."""
    items = data.train.single[:, 0]
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        target = items[torch.randint(len(items), (batch,), generator=gen)]
        history = items[torch.randint(len(items), (batch * length,), generator=gen)]
        lengths = torch.cat([torch.ones(batch, dtype=torch.int64), torch.full((batch,), length)])
        out.append(KeyedJaggedTensor.from_lengths_sync(["item", "hist_item"], torch.cat([target, history]), lengths))
    return out


def _searchers(schema, width: int, k: int, kjts: list[KeyedJaggedTensor]):
    """Two timed functions of a batch index (batches cycled): `lookup+search`, the attention
    lookup of target and history and the top-k search; `search`, the scores and top-k
    alone on vectors looked up beforehand."""
    torch.manual_seed(0)
    embedding = build_embedding(schema, Full(dim=width), StoreSettings("tbe"))
    history_name = schema.sequences[0].name

    def vectors(kjt: KeyedJaggedTensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        emb = embedding(kjt)
        history, mask = emb.sequences[history_name]
        return emb.pooled[:, 0], history, mask

    with torch.no_grad():
        looked_up = [vectors(kjt) for kjt in kjts]

    def lookup_and_search(i: int) -> torch.Tensor:
        with torch.no_grad():
            return search(*vectors(kjts[i % len(kjts)]), k)[0]

    def search_only(i: int) -> torch.Tensor:
        with torch.no_grad():
            return search(*looked_up[i % len(looked_up)], k)[0]

    return {"lookup+search": lookup_and_search, "search": search_only}


def search_speed(data: DataSplits, args: argparse.Namespace) -> dict[str, Any]:
    from recemb.features import FeatureSpec, Schema

    test = _test_batches(data, args.batch_size, args.search_batches)
    workloads = {f"test L={args.max_len} B={test[0].stride()}": (data.train.schema, test)}
    if args.long_len:
        card = data.train.schema.sparse[0].cardinality
        history = FeatureSpec("hist_item", card, "sequence", max_len=args.long_len, table="item")
        schema = Schema((FeatureSpec("item", card), history))
        batch = max(1, args.batch_size // 8)
        workloads[f"long L={args.long_len} B={batch}"] = (schema, _long_batches(data, batch, 2, args.long_len))
    out = {}
    for d in (int(x) for x in str(args.search_dims).split(",")):
        if d % 8:
            raise ValueError(f"--search-dims must be multiples of 8 (D/2 a multiple of 4), got {d}")
        for name, (schema, kjts) in workloads.items():
            fns = {}
            for w in (d, d // 2):
                for stage, fn in _searchers(schema, w, args.k, kjts).items():
                    fns[f"{stage} d_a={w}"] = fn
            timings = time_interleaved(fns, args.warmup, args.repeats, args.rounds)
            for stage in ("lookup+search", "search"):
                full, half = timings[f"{stage} d_a={d}"], timings[f"{stage} d_a={d // 2}"]
                out[f"{stage}, D={d}, {name}"] = {
                    "full_ms": full.median_ms("cpu"), "half_ms": half.median_ms("cpu"),
                    "half_over_full": half.median_ms("cpu") / full.median_ms("cpu"),
                    "half_over_full_wall": half.median_ms("wall") / full.median_ms("wall"),
                }  # fmt: skip
    return out


def _print(result: dict) -> None:
    s = result["settings"]
    print(f"sequence benchmark: {s['data']}, {s['rows']:,} rows ({s['test_rows']:,} test), D={s['dim']}, k={s['k']}, "
          f"{s['seeds']} seed(s), {s['epochs']} epoch(s), {s['threads']} thread(s)")  # fmt: skip
    if "quality" in result:
        columns = f"{'AUC mean ± std':>17} | {'GAUC mean ± std':>17}"
        print(f"{'variant':<12} | {'table params':>12} | {columns} | per seed AUC")
        for v, r in result["quality"]["variants"].items():
            seeds = " ".join(f"{x['auc']:.4f}" for x in r["runs"])
            print(f"{v:<12} | {r['table_params']:>12,} | {r['auc_mean']:.4f} ± {r['auc_std']:.4f} | "
                  f"{r['gauc_mean']:.4f} ± {r['gauc_std']:.4f} | {seeds}")  # fmt: skip
        for name, c in result["quality"]["comparisons"].items():
            seeds = "; ".join(f"{p['auc_diff']:+.4f} [{p['low']:+.4f}, {p['high']:+.4f}]" for p in c["per_seed"])
            print(f"{name}: AUC diff mean {c['auc_diff_mean']:+.4f} (per seed, 95% paired bootstrap: {seeds}); "
                  f"GAUC diff mean {c['gauc_diff_mean']:+.4f}")  # fmt: skip
    for name, r in result["search"].items():
        print(f"{name}: d_a=D {r['full_ms']:.2f} ms, d_a=D/2 {r['half_ms']:.2f} ms, "
              f"ratio {r['half_over_full']:.2f} (wall {r['half_over_full_wall']:.2f})")  # fmt: skip


def main() -> None:  # python -m recemb.bench.sequence, until the CLI has `recemb bench sequence`
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    result = run(parser.parse_args())
    print(json.dumps(result, default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x)))


if __name__ == "__main__":
    main()
