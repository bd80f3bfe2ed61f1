"""`recemb bench lookup --kinds ...`: table kinds at one memory budget, timed against `full`.

The workload is the variants comparison's (lookup.py): Criteo-like, 26 single-valued
features, Zipf ids, a few pre-built batches cycled, one CPU thread. Every kind is built
from its config with `budget_ratio` = --budget-ratio (full at ratio 1, always included as
the baseline), on the TBE store with row-wise Adagrad fused into backward. Modes:

    forward     the kind's forward without autograd: input checks, id transform, one TBE
                lookup for all features, combine
    train       forward with autograd, loss (pooled * w).sum() with fixed w [F, D], and
                backward, which runs the fused optimizer (a kind's dense parameters, such
                as projections, get gradients but no optimizer step)
    transform   the id transform alone (`store_input`): hashing and bucketing for the
                hashed kinds, quotient and remainder for qr, the id range check for full

Per kind: `bytes` (parameters, optimizer state apart, as `memory().bytes`), `<mode>_ms`
(median by --clock; `_wall_ms` by wall time), `hashing_share` = transform_ms / forward_ms
(the share of a lookup spent on the id transform; of a train step: `hashing_share_of_train`),
and `forward_speedup_vs_full` / `train_speedup_vs_full`: full's median over the kind's,
measured in the same run (>1: faster than full; `_wall` twins by wall time). Kinds take
turns in rounds as in lookup.py, so a burst of outside load hits them alike.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from recemb.bench.lookup import INIT_STD, LR, Batches, check_options
from recemb.bench.timing import CLOCKS, Timing, time_interleaved
from recemb.bench.workload import criteo_schema, zipf_batches
from recemb.config import closest
from recemb.features import Schema
from recemb.storage import EmbeddingOptimizer, StoreSettings
from recemb.tables import KINDS, Full, TableEmbedding, build_embedding

MODES: tuple[str, ...] = ("forward", "train", "transform")
BASELINE = "full"


def parse_kinds(text: str) -> list[str]:
    """'hashed,unified' -> ['full', 'hashed', 'unified']: known kinds, full first."""
    names = [k.strip() for k in text.split(",") if k.strip()]
    for name in names:
        if name not in KINDS:
            raise ValueError(
                f"--kinds: unknown table kind {name!r}{closest(name, KINDS)}; known kinds: {sorted(KINDS)}"
            )
    if not names:
        raise ValueError(f"--kinds must name some of {sorted(KINDS)}, got {text!r}")
    return [BASELINE, *dict.fromkeys(k for k in names if k != BASELINE)]


def kind_config(kind: str, dim: int, budget_ratio: float) -> Any:
    """The config of `kind` at `budget_ratio` of full's bytes (full itself: ratio 1)."""
    if kind == BASELINE:
        return Full(dim=dim, init_std=INIT_STD)
    cls = KINDS[kind]
    fields = {f.name for f in dataclasses.fields(cls)}
    if "budget_ratio" not in fields:
        raise ValueError(
            f"--kinds: kind {kind!r} has no budget_ratio setting, so it cannot be sized to a budget; leave it out"
        )
    return cls(dim=dim, budget_ratio=budget_ratio, **({"init_std": INIT_STD} if "init_std" in fields else {}))


@dataclasses.dataclass
class KindUnderTest:
    """One built kind and its timed functions (`fns[mode](step)`); no `transform` where the
    kind has no separate id transform (it overrides `embed`)."""

    name: str
    embedding: TableEmbedding
    fns: dict[str, Callable[[int], object]]


def build(kind: str, schema: Schema, batches: Batches, args: argparse.Namespace, loss_weights: Tensor) -> KindUnderTest:
    settings = StoreSettings(backend="tbe", optimizer=EmbeddingOptimizer("rowwise_adagrad", lr=LR), seed=args.seed)
    emb = build_embedding(schema, kind_config(kind, args.dim, args.budget_ratio), settings)
    dense = [p for name, p in emb.named_parameters() if not name.startswith("store.")]

    def forward(step: int) -> Tensor:
        with torch.no_grad():
            return emb(batches(step)).pooled  # [B, F, D]

    def train(step: int) -> None:
        (emb(batches(step)).pooled * loss_weights).sum().backward()
        for p in dense:
            p.grad = None

    def transform(step: int) -> object:
        with torch.no_grad():
            return emb.store_input(batches(step))

    fns: dict[str, Callable[[int], object]] = {"forward": forward, "train": train, "transform": transform}
    try:
        transform(0)
    except NotImplementedError:
        del fns["transform"]
    return KindUnderTest(kind, emb, fns)


def run(args: argparse.Namespace) -> dict:
    """Build every kind, time its modes, print a table, return the results."""
    names = parse_kinds(args.kinds)
    check_options(args)
    if not 0 < args.budget_ratio <= 1:
        raise ValueError(f"--budget-ratio must be in (0, 1], got {args.budget_ratio}")
    torch.set_num_threads(args.threads)
    schema = criteo_schema(args.features, args.cap)
    batches = Batches(zipf_batches(schema, args.batch, args.batches, args.zipf, args.seed))
    loss_weights = torch.randn(len(schema.sparse), args.dim, generator=torch.Generator().manual_seed(args.seed + 1))
    kinds = {name: build(name, schema, batches, args, loss_weights) for name in names}
    timings: dict[str, dict[str, Timing]] = {}
    for mode in MODES:
        fns = {name: k.fns[mode] for name, k in kinds.items() if mode in k.fns}
        timings[mode] = time_interleaved(fns, args.warmup, args.repeats, args.rounds)
    result = _results(args, schema, kinds, timings)
    _print_table(result)
    return result


def _results(
    args: argparse.Namespace, schema: Schema, kinds: dict[str, KindUnderTest], timings: dict[str, dict[str, Timing]]
) -> dict:
    result: dict = {
        "benchmark": "lookup",
        "settings": {
            "kinds": list(kinds),
            "budget_ratio": args.budget_ratio,
            "batch": args.batch,
            "dim": args.dim,
            "cap": args.cap,
            "features": args.features,
            "rows": sum(f.cardinality for f in schema.sparse),
            "threads": args.threads,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "batches": args.batches,
            "zipf": args.zipf,
            "seed": args.seed,
            "lr": LR,
            "clock": args.clock,
        },
        "kinds": {},
    }
    full_bytes = kinds[BASELINE].embedding.memory().bytes

    def median(mode: str, name: str, clock: str) -> float | None:
        timing = timings[mode].get(name)
        return None if timing is None else timing.median_ms(clock)

    for name, k in kinds.items():
        memory = k.embedding.memory()
        row: dict = {"bytes": memory.bytes, "bytes_vs_full": memory.bytes / full_bytes}
        row["optimizer_bytes"] = memory.optimizer_bytes
        row |= {f"{mode}_ms": median(mode, name, args.clock) for mode in MODES}
        for clock in CLOCKS:
            row |= {f"{mode}_{clock}_ms": median(mode, name, clock) for mode in MODES}
        transform = row["transform_ms"]
        row["hashing_share"] = None if transform is None else transform / row["forward_ms"]
        row["hashing_share_of_train"] = None if transform is None else transform / row["train_ms"]
        for mode in ("forward", "train"):
            for clock, suffix in ((args.clock, ""), ("wall", "_wall")):
                row[f"{mode}_speedup_vs_full{suffix}"] = median(mode, BASELINE, clock) / median(mode, name, clock)
        result["kinds"][name] = row
    return result


def _print_table(result: dict) -> None:
    s = result["settings"]
    print(
        f"table kinds at budget_ratio {s['budget_ratio']} of full's bytes: {s['features']} features, "
        f"{s['rows']:,} ids, batch {s['batch']}, dim {s['dim']}, zipf {s['zipf']}, {s['threads']} thread(s); "
        f"median {s['clock']} time of {s['repeats']} calls in {s['rounds']} rounds"
    )
    header = (
        f"{'kind':<15} | {'MiB':>8} {'/full':>6} | {'fwd ms':>7} {'train ms':>8} {'transform':>9} | "
        f"{'hashing':>7} | {'fwd vs full':>11} {'train vs full':>13}"
    )
    print(header)
    print("-" * len(header))
    for name, r in result["kinds"].items():
        transform = "-" if r["transform_ms"] is None else f"{r['transform_ms']:.2f}"
        share = "-" if r["hashing_share"] is None else f"{100 * r['hashing_share']:.0f}%"
        print(
            f"{name:<15} | {r['bytes'] / 2**20:>8.1f} {r['bytes_vs_full']:>6.3f} | {r['forward_ms']:>7.2f} "
            f"{r['train_ms']:>8.2f} {transform:>9} | {share:>7} | {r['forward_speedup_vs_full']:>10.2f}x "
            f"{r['train_speedup_vs_full']:>12.2f}x"
        )
    print("vs full: full's median time over the kind's (>1: faster); hashing: transform / forward")
