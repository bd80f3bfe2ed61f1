"""`recemb bench train`: AutoInt training steps, recemb against DeepCTR-Torch, in one run.

Workload: the synthetic Criteo-like data (recemb.data.synthetic.criteo_like_config: 13 dense
and 26 single-valued features with Kaggle's cardinalities capped at --cap), batches of
--batch rows, a few distinct batches cycled, one CPU thread.

Model, the same on both sides: plain AutoInt (no DNN), embeddings --dim wide, --layers
interacting layers of --heads heads each dim/heads wide (DeepCTR's InteractingLayer widths:
att_embedding_size = embedding_dim // head_num), residual connections, one output layer,
binary cross-entropy. Where the two differ, as each library does it:
- recemb: `build_embedding(table)` on the TBE store (row-wise Adagrad fused into backward),
  AutoInt(AutoIntConfig(attention_dim=dim // heads)); dense weights by Adam. Per --tables
  entry (`full`, and `unified` at a tenth of full's bytes by default), up to two variants
  (--recemb-fields): `<kind>`, DeepCTR's configuration, the dense features in a linear term
  of the logit and attention over the 26 sparse fields (dense_as_fields=False); and
  `<kind>+dense_fields`, recemb's default and the paper's, dense features as fields too
  (26 + 13 = 39 fields, about twice the attention work: it costs F² per sample).
- deepctr: deepctr_torch.models.AutoInt(att_layer_num, att_head_num, att_res=True,
  dnn_hidden_units=()), its nn.Embedding tables (dense gradients) and every weight by Adam;
  dense features enter its linear part (26 attention fields). l2_reg_embedding=0 (recemb has
  no L2 term; DeepCTR's default 1e-5 adds a pass over every table each step).
`speedup_vs_deepctr` compares every variant with DeepCTR's step; the like-for-like figure
is the `<kind>` one. DeepCTR's dense gradients and Adam cover every table row each step, so
its step grows with the tables (--cap) and recemb's hardly does.

What is timed: a training step, i.e. forward, loss, backward and the optimizer step(s) on a
pre-built batch (recemb: a fresh KJT over pre-built ids, as a data loader hands out);
DeepCTR's step is the body of its `fit` loop (model(x), BCE with reduction='sum' as `fit`
uses, its regularization term, backward, Adam). `fit` itself (DataLoader over a
TensorDataset, per-epoch callbacks) is timed separately, one epoch over the same rows,
reported per step (`deepctr_fit`). The variants take turns in rounds after warm-up steps;
medians by process CPU time (--clock) and wall time. DeepCTR-Torch is a benchmark-only
dependency (`make bench-env`: pip install --no-deps deepctr-torch==0.3.0); without it the
recemb variants are still timed and the speedups are null.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import time
import types
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from recemb.bench.timing import CLOCKS, Timing, time_interleaved
from recemb.data.batch import CTRData, kjt_from_ids
from recemb.data.synthetic import criteo_like_config, generate
from recemb.models import AutoInt, AutoIntConfig
from recemb.storage import EmbeddingOptimizer, StoreSettings
from recemb.tables import build_embedding, parse_table

DEFAULT_TABLES = "full:dim=16;unified:dim=16,budget_ratio=0.1"
PEER = "deepctr"
# --recemb-fields: whether recemb's variants take the dense features as attention fields
FIELD_MODES = {"sparse": (False,), "all": (True,), "both": (False, True)}
DENSE_FIELDS_SUFFIX = "+dense_fields"
DENSE_LR = 1e-3
EMB_LR = 0.05

Step = Callable[[int], object]


# -- recemb ------------------------------------------------------------------------------------
def recemb_step(
    data: CTRData, table: str, dense_as_fields: bool, args: argparse.Namespace
) -> tuple[Step, dict[str, Any]]:
    """A training step of recemb's AutoInt with `table`, and what it holds (bytes, fields)."""
    torch.manual_seed(args.seed)
    cfg = parse_table(table)
    if getattr(cfg, "dim", args.dim) != args.dim:
        raise ValueError(f"--tables entry {table!r} has dim {cfg.dim}; the benchmark's --dim is {args.dim}")
    settings = StoreSettings(backend="tbe", optimizer=EmbeddingOptimizer("rowwise_adagrad", lr=EMB_LR), seed=args.seed)
    embedding = build_embedding(data.schema, cfg, settings)
    model_cfg = AutoIntConfig(
        layers=args.layers, heads=args.heads, attention_dim=args.dim // args.heads, dense_as_fields=dense_as_fields
    )
    model = AutoInt(embedding, model_cfg)
    optimizer = torch.optim.Adam(model.dense_parameters(), lr=DENSE_LR)
    names, parts = data.schema.names, _parts(data, args.batch)

    def step(i: int) -> None:
        ids, dense, labels = parts[i % len(parts)]
        loss = F.binary_cross_entropy_with_logits(model(kjt_from_ids(ids, names), dense), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # the store's row-wise Adagrad updates embedding rows here
        optimizer.step()

    memory = embedding.memory()
    info = {
        "table": table,
        "table_bytes": memory.bytes,
        "table_optimizer_bytes": memory.optimizer_bytes,
        "fields": len(data.schema.sparse) + (len(data.schema.dense) if dense_as_fields else 0),
        "dense_params": sum(p.numel() for p in model.dense_parameters()),
    }
    return step, info


def _parts(data: CTRData, batch: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [
        (data.single[a : a + batch], data.dense[a : a + batch], data.labels[a : a + batch])
        for a in range(0, len(data) - batch + 1, batch)
    ]


# -- DeepCTR-Torch -----------------------------------------------------------------------------
def import_deepctr() -> Any | None:
    """deepctr_torch, or None when it is not installed. Its package __init__ starts a thread
    that asks PyPI for a newer version through `requests` (not installed with --no-deps, and
    no network here): a stand-in module answers 'not found' so nothing is fetched or printed."""
    offline = types.ModuleType("requests")
    offline.codes = types.SimpleNamespace(ok=200)  # type: ignore[attr-defined]
    offline.get = lambda *a, **k: types.SimpleNamespace(status_code=0, text="")  # type: ignore[attr-defined]
    real = sys.modules.get("requests")
    sys.modules["requests"] = offline
    try:
        import deepctr_torch
        import deepctr_torch.models
    except ImportError:
        return None
    finally:
        if real is not None:
            sys.modules["requests"] = real
        else:
            sys.modules.pop("requests", None)
    return deepctr_torch


def deepctr_model(dc: Any, data: CTRData, args: argparse.Namespace) -> tuple[Any, list[str]]:
    """DeepCTR-Torch's AutoInt for the schema of `data`, compiled with Adam; and its input
    columns in order (its `feature_index`)."""
    from deepctr_torch.inputs import DenseFeat, SparseFeat

    sparse = [SparseFeat(f.name, vocabulary_size=f.cardinality, embedding_dim=args.dim) for f in data.schema.sparse]
    dense = [DenseFeat(name, 1) for name in data.schema.dense]
    columns = sparse + dense
    model = dc.models.AutoInt(
        columns, columns, att_layer_num=args.layers, att_head_num=args.heads, att_res=True, dnn_hidden_units=(),
        l2_reg_embedding=0.0, seed=args.seed, device="cpu",
    )  # fmt: skip
    model.compile(torch.optim.Adam(model.parameters(), lr=DENSE_LR), "binary_crossentropy")
    return model, list(model.feature_index)


def _deepctr_inputs(data: CTRData, order: list[str]) -> np.ndarray:
    """[N, columns] float32 in DeepCTR's column order: ids and dense values side by side."""
    columns = {f.name: data.single[:, i].float() for i, f in enumerate(data.schema.sparse)}
    columns |= {name: data.dense[:, i] for i, name in enumerate(data.schema.dense)}
    return torch.stack([columns[name] for name in order], dim=1).numpy()


def deepctr_step(model: Any, data: CTRData, order: list[str], batch: int) -> Step:
    """The body of DeepCTR's `fit` loop for one pre-built batch."""
    x_all = torch.from_numpy(_deepctr_inputs(data, order))
    parts = [(x_all[a : a + batch], data.labels[a : a + batch]) for a in range(0, len(data) - batch + 1, batch)]
    model.train()

    def step(i: int) -> None:
        x, y = parts[i % len(parts)]
        y_pred = model(x).squeeze(-1)
        model.optim.zero_grad()
        loss = model.loss_func(y_pred, y, reduction="sum")
        total = loss + model.get_regularization_loss() + model.aux_loss
        total.backward()
        model.optim.step()

    return step


def time_deepctr_fit(model: Any, data: CTRData, order: list[str], batch: int, repeats: int) -> Timing:
    """Per-step times of `fit` (one epoch over the rows of whole batches), `repeats` epochs."""
    rows = len(data) // batch * batch
    x = _deepctr_inputs(data, order)[:rows]
    y = data.labels[:rows].numpy()
    steps = rows // batch
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(io.StringIO()):  # fit prints its device and sizes
            model.fit([x[:, i] for i in range(x.shape[1])], y, batch_size=batch, epochs=1, verbose=0, shuffle=True)
        wall.append((time.perf_counter() - w0) * 1e3 / steps)
        cpu.append((time.process_time() - c0) * 1e3 / steps)
    return Timing(tuple(wall), tuple(cpu))


# -- the command -------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="autoint", choices=["autoint"], help="the model (AutoInt only)")
    parser.add_argument("--batch", type=int, default=4096, help="samples per step (default 4096)")
    parser.add_argument("--dim", type=int, default=16, help="embedding width (default 16)")
    parser.add_argument("--layers", type=int, default=3, help="interacting layers (default 3)")
    parser.add_argument("--heads", type=int, default=2, help="attention heads, each dim/heads wide (default 2)")
    parser.add_argument("--cap", type=int, default=1_000_000, help="cap on each Criteo cardinality (default 1e6)")
    parser.add_argument(
        "--tables", default=DEFAULT_TABLES, help=f"recemb tables, ';'-separated (default {DEFAULT_TABLES})"
    )
    parser.add_argument("--batches", type=int, default=4, help="distinct pre-built batches, cycled (default 4)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant and round (default 2)")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per variant (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, each running every variant in turn (default 2)")
    parser.add_argument("--fit-repeats", type=int, default=1, help="epochs of DeepCTR's fit timed (0: skip; default 1)")
    parser.add_argument("--no-deepctr", action="store_true", help="time recemb only")
    parser.add_argument(
        "--recemb-fields", choices=list(FIELD_MODES), default="both",
        help="recemb variants per table: sparse (attention over the 26 sparse fields, dense features in a linear "
        "term: DeepCTR's configuration), all (the 13 dense features as fields too: recemb's default AutoInt), or "
        "both (default)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--clock", choices=CLOCKS, default="cpu", help="clock of the *_ms keys and ratios (default cpu)"
    )
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build every variant, time its training step, print a table, return the results."""
    for name in ("batch", "dim", "layers", "heads", "cap", "batches", "repeats", "rounds", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.fit_repeats < 0:
        raise ValueError("--warmup and --fit-repeats must be >= 0")
    if args.dim % args.heads:
        raise ValueError(f"--dim ({args.dim}) must be a multiple of --heads ({args.heads}), as DeepCTR's AutoInt needs")
    tables = [t.strip() for t in args.tables.split(";") if t.strip()]
    if not tables:
        raise ValueError("--tables must name at least one recemb table, e.g. full:dim=16")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args, tables)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, tables: list[str]) -> dict[str, Any]:
    data = generate(criteo_like_config(rows=args.batch * args.batches, cap=args.cap, seed=args.seed))
    steps: dict[str, Step] = {}
    infos: dict[str, dict[str, Any]] = {}
    for table in tables:
        kind = _variant_name(table, steps)
        for dense_as_fields in FIELD_MODES[args.recemb_fields]:
            name = kind + DENSE_FIELDS_SUFFIX if dense_as_fields else kind
            steps[name], infos[name] = recemb_step(data, table, dense_as_fields, args)
    dc = None if args.no_deepctr else import_deepctr()
    peer = None
    if dc is not None:
        peer, order = deepctr_model(dc, data, args)
        steps[PEER] = deepctr_step(peer, data, order, args.batch)
        infos[PEER] = {
            "version": dc.__version__,
            "table_bytes": sum(p.numel() for n, p in peer.named_parameters() if "embedding_dict" in n) * 4,
            "fields": len(data.schema.sparse),
            "params": sum(p.numel() for p in peer.parameters()),
        }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        timings = time_interleaved(steps, args.warmup, args.repeats, args.rounds)
        if peer is not None and args.fit_repeats:
            timings[f"{PEER}_fit"] = time_deepctr_fit(peer, data, order, args.batch, args.fit_repeats)
            infos[f"{PEER}_fit"] = {"note": "DeepCTR's fit: one epoch, per step"}
    result = _results(args, tables, timings, infos, dc is not None)
    _print_table(result)
    return result


def _variant_name(table: str, taken: dict[str, Any]) -> str:
    name = table.partition(":")[0]
    return name if name not in taken else table


def _results(
    args: argparse.Namespace, tables: list[str], timings: dict[str, Timing], infos: dict[str, dict], has_peer: bool
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "benchmark": "train",
        "settings": {
            "model": args.model, "batch": args.batch, "dim": args.dim, "layers": args.layers, "heads": args.heads,
            "attention_dim": args.dim // args.heads, "cap": args.cap, "tables": tables, "batches": args.batches,
            "warmup": args.warmup, "repeats": args.repeats, "rounds": args.rounds, "fit_repeats": args.fit_repeats,
            "threads": args.threads, "clock": args.clock, "seed": args.seed, "dense_lr": DENSE_LR, "emb_lr": EMB_LR,
            "recemb_fields": args.recemb_fields,
        },  # fmt: skip
        "variants": {},
        "speedup_vs_deepctr": None,
        "speedup_vs_deepctr_fit": None,
    }
    for name, timing in timings.items():
        median = timing.median_ms(args.clock)
        row = {"step_ms": median, "samples_per_s": args.batch / median * 1e3}
        for clock in CLOCKS:
            row |= {f"step_{clock}_ms": timing.median_ms(clock), f"step_{clock}_min_ms": timing.min_ms(clock)}
        result["variants"][name] = row | infos.get(name, {})
    ours = [n for n in result["variants"] if n not in (PEER, f"{PEER}_fit")]
    if has_peer:
        for base, key in ((PEER, "speedup_vs_deepctr"), (f"{PEER}_fit", "speedup_vs_deepctr_fit")):
            if base in timings:
                theirs = timings[base]
                result[key] = {n: theirs.median_ms(args.clock) / timings[n].median_ms(args.clock) for n in ours}
                result[key + "_wall"] = {n: theirs.median_ms("wall") / timings[n].median_ms("wall") for n in ours}
    return result


def _print_table(result: dict[str, Any]) -> None:
    s = result["settings"]
    print(
        f"train benchmark: AutoInt, batch {s['batch']}, dim {s['dim']}, {s['layers']} layers x {s['heads']} heads "
        f"(attention width {s['attention_dim']}), Criteo-like data capped at {s['cap']:,}, {s['threads']} thread(s); "
        f"median {s['clock']} time of {s['repeats']} steps in {s['rounds']} rounds"
    )
    header = (
        f"{'variant':<22} | {'step ms':>9} | {'wall ms':>9} | {'samples/s':>10} | {'table bytes':>13} | "
        f"{'fields':>6} | vs deepctr step / fit"
    )
    print(header)
    print("-" * len(header))
    speed, fit = result.get("speedup_vs_deepctr") or {}, result.get("speedup_vs_deepctr_fit") or {}
    for name, r in result["variants"].items():
        bytes_ = f"{r['table_bytes']:,}" if "table_bytes" in r else "-"
        ratio = f"{speed[name]:.2f}x / {fit[name]:.2f}x" if name in speed and name in fit else (
            f"{speed[name]:.2f}x" if name in speed else "")  # fmt: skip
        print(f"{name:<22} | {r['step_ms']:>9.1f} | {r['step_wall_ms']:>9.1f} | {r['samples_per_s']:>10.0f} | "
              f"{bytes_:>13} | {r.get('fields', ''):>6} | {ratio}")  # fmt: skip
    if result["speedup_vs_deepctr"] is None:
        print("deepctr-torch is not installed (make bench-env): no speedups")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m recemb.bench.train_speed", description=__doc__.splitlines()[0])
    add_arguments(parser)
    result = run(parser.parse_args(argv))
    print(json.dumps(result, default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x)))
    return result


if __name__ == "__main__":
    main()
