"""`recemb bench lookup`: embedding lookup and training step, recemb against the usual ways.

With --kinds, it compares table kinds at one memory budget instead (kinds_lookup.py).

Workload: Criteo-like, 26 single-valued features (Kaggle cardinalities capped at --cap),
Zipf ids with scrambled ranks, a few distinct batches cycled, one CPU thread. Variants:

    recemb      build_embedding(Full) on the TBE store: merged tables, ids range-checked
                once before the kernel, row-wise Adagrad fused into backward
    tbe         fbgemm's SplitTableBatchedEmbeddingBagsCodegen the plain way: one table
                per feature, its own bounds check on (FATAL), exact row-wise Adagrad
    loop        a Python loop of nn.EmbeddingBag(sparse=True), one per feature, over
                kjt.to_dict(); torch.optim.Adagrad (sparse gradients)
    torchrec    torchrec EmbeddingBagCollection (per-table nn.EmbeddingBag, dense
                gradients); torch.optim.SGD, the cheapest optimizer with dense gradients

Modes: `forward` is a lookup without autograd (inference, evaluation); `forward_grad` the
same lookup with autograd on (the first half of a training step, graph then dropped);
`train` a full step: lookup, loss (pooled * w).sum() with fixed w [F, D], backward, and
the optimizer (fused into backward for recemb and tbe). Each call gets a fresh KJT over
pre-built tensors, as from a data loader, so no variant reuses a KJT's caches.

Timing: the variants take turns in rounds (a burst of outside load then hits them alike);
each turn starts with warm-up calls that refill the caches the others evicted. The `*_ms`
and ratio keys use the median process CPU time by default (--clock), which leaves out
time spent waiting for a core on a shared machine; wall-time medians are reported too.
"""

from __future__ import annotations

import argparse
import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.bench.timing import CLOCKS, Timing, time_interleaved
from recemb.bench.workload import criteo_schema, zipf_batches
from recemb.features import Schema
from recemb.storage import EmbeddingOptimizer, StoreSettings
from recemb.tables import Full, build_embedding

VARIANTS: tuple[str, ...] = ("recemb", "tbe", "loop", "torchrec")
MODES: tuple[str, ...] = ("forward", "forward_grad", "train")
LR = 0.01
INIT_STD = 0.01


class Batches:
    """Pre-built batches, cycled; each call hands out a fresh KJT over the same tensors."""

    def __init__(self, kjts: list[KeyedJaggedTensor]) -> None:
        self._parts = [(k.keys(), k.values(), k.lengths(), k.offsets(), k.stride()) for k in kjts]

    def __call__(self, step: int) -> KeyedJaggedTensor:
        keys, values, lengths, offsets, stride = self._parts[step % len(self._parts)]
        return KeyedJaggedTensor(keys=keys, values=values, lengths=lengths, offsets=offsets, stride=stride)


@dataclass
class Variant:
    """One way of embedding a batch: `lookup(step) -> [B, F, D]` for the batch `step`
    picks, and `optimizer_step()`, run after backward (a no-op where it is fused)."""

    name: str
    lookup: Callable[[int], Tensor]
    optimizer_step: Callable[[], None]
    note: str
    weights: Tensor | None = None  # the big weight buffer, to report its huge-page share

    def modes(self, loss_weights: Tensor) -> dict[str, Callable[[int], object]]:
        """The timed functions, by mode."""

        def forward(step: int) -> Tensor:
            with torch.no_grad():
                return self.lookup(step)

        def train(step: int) -> None:
            (self.lookup(step) * loss_weights).sum().backward()
            self.optimizer_step()

        return {"forward": forward, "forward_grad": self.lookup, "train": train}


def _fused() -> None:
    """The optimizer ran inside backward."""


def build_recemb(schema: Schema, batches: Batches, dim: int, seed: int) -> Variant:
    settings = StoreSettings(backend="tbe", optimizer=EmbeddingOptimizer("rowwise_adagrad", lr=LR), seed=seed)
    emb = build_embedding(schema, Full(dim=dim, init_std=INIT_STD), settings)

    def lookup(step: int) -> Tensor:
        return emb(batches(step)).pooled  # [B, F, D]

    note = "Full on the TBE store (merged tables, ids checked once), row-wise Adagrad fused"
    return Variant("recemb", lookup, _fused, note, emb.store.tbe.weights_host)


def build_tbe(schema: Schema, batches: Batches, dim: int, seed: int) -> Variant:
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
        BoundsCheckMode,
        EmbeddingLocation,
        PoolingMode,
    )
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        [(f.cardinality, dim, EmbeddingLocation.HOST, ComputeDevice.CPU) for f in schema.sparse],
        optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=LR,
        eps=1e-8,
        pooling_mode=PoolingMode.SUM,
        bounds_check_mode=BoundsCheckMode.FATAL,
        device=torch.device("cpu"),
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for table in tbe.split_embedding_weights():
            table.normal_(0.0, INIT_STD, generator=gen)
    features = len(schema.sparse)

    def lookup(step: int) -> Tensor:
        kjt = batches(step)
        return tbe(kjt.values(), kjt.offsets()).view(kjt.stride(), features, dim)  # [B, F, D]

    note = "fbgemm TBE, a table per feature, bounds check FATAL, row-wise Adagrad fused"
    return Variant("tbe", lookup, _fused, note, tbe.weights_host)


def build_loop(schema: Schema, batches: Batches, dim: int, seed: int) -> Variant:
    gen = torch.Generator().manual_seed(seed)
    bags = nn.ModuleList()
    for f in schema.sparse:
        bag = nn.EmbeddingBag(f.cardinality, dim, mode="sum", sparse=True, include_last_offset=True)
        with torch.no_grad():
            bag.weight.normal_(0.0, INIT_STD, generator=gen)
        bags.append(bag)
    opt = torch.optim.Adagrad(bags.parameters(), lr=LR)
    keys = schema.names

    def lookup(step: int) -> Tensor:
        per_key = batches(step).to_dict()
        return torch.stack([bag(per_key[k].values(), per_key[k].offsets()) for k, bag in zip(keys, bags)], dim=1)

    def optimizer_step() -> None:
        opt.step()
        opt.zero_grad()

    return Variant("loop", lookup, optimizer_step, "nn.EmbeddingBag(sparse=True) per feature, torch.optim.Adagrad")


def build_torchrec(schema: Schema, batches: Batches, dim: int, seed: int) -> Variant:
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    torch.manual_seed(seed)  # EmbeddingBagCollection initialises from the global generator
    ebc = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=f"t_{f.name}", num_embeddings=f.cardinality, embedding_dim=dim, feature_names=[f.name]
            )
            for f in schema.sparse
        ],
        device=torch.device("cpu"),
    )
    opt = torch.optim.SGD(ebc.parameters(), lr=LR)
    features = len(schema.sparse)

    def lookup(step: int) -> Tensor:
        kjt = batches(step)
        return ebc(kjt).values().view(kjt.stride(), features, dim)  # [B, F, D]

    def optimizer_step() -> None:
        opt.step()
        opt.zero_grad()

    note = "torchrec EmbeddingBagCollection, dense grads, torch.optim.SGD"
    return Variant("torchrec", lookup, optimizer_step, note)


BUILDERS: dict[str, Callable[[Schema, Batches, int, int], Variant]] = {
    "recemb": build_recemb,
    "tbe": build_tbe,
    "loop": build_loop,
    "torchrec": build_torchrec,
}


def huge_page_share(t: Tensor) -> float | None:
    """The share of `t`'s bytes that sit on transparent huge pages (AnonHugePages of the
    mappings it spans, in /proc/self/smaps); None where that file is unreadable."""
    start, end = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
    huge, inside = 0, False
    try:
        with open("/proc/self/smaps") as smaps:
            for line in smaps:
                span = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
                if span:
                    lo, hi = int(span[1], 16), int(span[2], 16)
                    inside = lo < end and start < hi
                elif inside and line.startswith("AnonHugePages:"):
                    huge += int(line.split()[1]) * 1024
    except OSError:
        return None
    return min(1.0, huge / max(1, end - start))


# -- the command ------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=4096, help="samples per batch (default 4096)")
    parser.add_argument("--dim", type=int, default=16, help="embedding dim (default 16)")
    parser.add_argument("--cap", type=int, default=1_000_000, help="cap on each feature's cardinality (default 1e6)")
    parser.add_argument("--features", type=int, default=26, help="use the first N Criteo features (default 26)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per variant and mode (default 30)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=8,
        help="untimed calls per variant at the start of each round, to refill the caches the other "
        "variants evicted (default 8: one pass over the default --batches)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each running every variant in turn (default 3)")
    parser.add_argument("--batches", type=int, default=8, help="distinct pre-built batches, cycled (default 8)")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the ids (default 1.1)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of ids and initial weights (default 0)")
    parser.add_argument(
        "--clock",
        choices=CLOCKS,
        default="cpu",
        help="clock of the *_ms and ratio keys: process CPU time (default; steadier on a shared "
        "machine) or wall time; both are reported per variant",
    )
    parser.add_argument(
        "--variants", default=None, help=f"comma-separated subset of {','.join(VARIANTS)} (default all)"
    )
    parser.add_argument(
        "--kinds",
        default=None,
        help="comma-separated table kinds, e.g. full,hashed,unified: instead of the variants, time each kind's "
        "forward, train step and id transform at --budget-ratio of full's bytes, against full (always "
        "included) in the same run; the JSON's `kinds` holds, per kind, bytes, train_speedup_vs_full, "
        "forward_speedup_vs_full and hashing_share (id transform / forward)",
    )
    parser.add_argument(
        "--budget-ratio",
        type=float,
        default=0.1,
        help="with --kinds: each kind's parameter bytes as a fraction of full's (default 0.1)",
    )


def _parse_variants(text: str | None) -> list[str]:
    if text is None:
        return list(VARIANTS)
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise ValueError(f"--variants must name some of {list(VARIANTS)}, got {text!r}")
    return names


def run(args: argparse.Namespace) -> dict:
    """Build every variant, time its modes, print a table, return the results (with
    --kinds: the comparison of table kinds, kinds_lookup.run)."""
    if args.kinds is not None:
        if args.variants is not None:
            raise ValueError("give --kinds (table kinds against full) or --variants (recemb against others), not both")
        from recemb.bench import kinds_lookup  # imported here: it imports this module

        return kinds_lookup.run(args)
    names = _parse_variants(args.variants)
    check_options(args)
    torch.set_num_threads(args.threads)
    schema = criteo_schema(args.features, args.cap)
    batches = Batches(zipf_batches(schema, args.batch, args.batches, args.zipf, args.seed))
    variants = {name: BUILDERS[name](schema, batches, args.dim, args.seed) for name in names}
    loss_weights = torch.randn(len(schema.sparse), args.dim, generator=torch.Generator().manual_seed(args.seed + 1))
    fns = {name: v.modes(loss_weights) for name, v in variants.items()}
    timings: dict[str, dict[str, Timing]] = {}
    with warnings.catch_warnings():  # Adagrad's note that sparse invariant checks are off
        warnings.filterwarnings("ignore", message="Sparse invariant checks", category=UserWarning)
        for mode in MODES:
            timings[mode] = time_interleaved(
                {name: f[mode] for name, f in fns.items()}, args.warmup, args.repeats, args.rounds
            )
    result = _results(args, schema, variants, timings)
    _print_table(result)
    return result


def check_options(args: argparse.Namespace) -> None:
    """Refuse sizes and counts the benchmark cannot run with."""
    for opt in ("batch", "dim", "cap", "repeats", "batches", "threads", "rounds"):
        if getattr(args, opt) < 1:
            raise ValueError(f"--{opt} must be >= 1, got {getattr(args, opt)}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")


def _results(
    args: argparse.Namespace, schema: Schema, variants: dict[str, Variant], timings: dict[str, dict[str, Timing]]
) -> dict:
    """Settings, per-variant medians (`<mode>_ms` by --clock, plus both clocks and minima),
    and recemb's ratios to the others by --clock (the `_wall` keys by wall time)."""
    result: dict = {
        "benchmark": "lookup",
        "settings": {
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
        "variants": {},
    }
    for name, v in variants.items():
        row: dict = {f"{mode}_ms": timings[mode][name].median_ms(args.clock) for mode in MODES}
        for clock in CLOCKS:
            row |= {f"{mode}_{clock}_ms": timings[mode][name].median_ms(clock) for mode in MODES}
            row |= {f"{mode}_{clock}_min_ms": timings[mode][name].min_ms(clock) for mode in MODES}
        row["huge_page_share"] = huge_page_share(v.weights) if v.weights is not None else None
        row["note"] = v.note
        result["variants"][name] = row
        for mode in MODES:  # flat copies, for scripts that read one number
            result[f"{name}_{mode}_ms"] = row[f"{mode}_ms"]
    if "recemb" not in variants:
        return result
    for base, key in (("loop", "speedup_vs_loop"), ("tbe", "ratio_vs_tbe"), ("torchrec", "speedup_vs_torchrec")):
        if base not in variants:
            continue
        for mode in MODES:
            for clock, suffix in ((args.clock, ""), ("wall", "_wall")):
                ours = timings[mode]["recemb"].median_ms(clock)
                theirs = timings[mode][base].median_ms(clock)
                # speedups: how many times faster recemb is; ratio_vs_tbe: recemb time / tbe time
                result[f"{mode}_{key}{suffix}"] = ours / theirs if key == "ratio_vs_tbe" else theirs / ours
    return result


def _print_table(result: dict) -> None:
    s = result["settings"]
    print(
        f"lookup benchmark: {s['features']} features, {s['rows']:,} rows, batch {s['batch']}, dim {s['dim']}, "
        f"zipf {s['zipf']}, {s['threads']} thread(s); median {s['clock']} time of {s['repeats']} calls in "
        f"{s['rounds']} rounds"
    )
    rows = result["variants"]
    ref = rows.get("recemb")
    labels = {"forward": "fwd", "forward_grad": "fwd+grad", "train": "train"}
    header = (
        f"{'variant':<9} | " + " ".join(f"{labels[m] + ' ms':>11}" for m in MODES) + " | "
        + " ".join(f"{labels[m] + ' /recemb':>15}" for m in MODES) + f" | {'2MiB pages':>10} | note"
    )
    print(header)
    print("-" * len(header))
    for name, r in rows.items():
        times = " ".join(f"{r[f'{m}_ms']:>11.2f}" for m in MODES)
        ratios = " ".join(f"{r[f'{m}_ms'] / ref[f'{m}_ms'] if ref else float('nan'):>14.2f}x" for m in MODES)
        share = "-" if r["huge_page_share"] is None else f"{100 * r['huge_page_share']:.0f}%"
        print(f"{name:<9} | {times} | {ratios} | {share:>10} | {r['note']}")
    for key in ("train_speedup_vs_loop", "forward_speedup_vs_loop", "train_ratio_vs_tbe", "forward_ratio_vs_tbe"):
        if key in result:
            print(f"{key} = {result[key]:.2f}  (by wall time: {result[key + '_wall']:.2f})")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m recemb.bench.lookup", description=__doc__.splitlines()[0])
    add_arguments(parser)
    result = run(parser.parse_args(argv))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
