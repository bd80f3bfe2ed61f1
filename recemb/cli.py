"""The `recemb` command: train, kinds, models, demo, bench."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import math
import sys
import typing
from typing import Any

from recemb.bench import BENCHES
from recemb.config import load_config_file, parse_settings


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line flags as a config on top of the file's."""
    conf: dict[str, Any] = {}
    if args.data:
        conf["data"] = args.data
    if args.split:
        conf["split"] = [float(x) for x in args.split.split(",")]
    if args.table:
        kind, _, settings = args.table.partition(":")
        conf["table"] = {"kind": kind, **parse_settings(settings)}
    if args.model:
        conf["model"] = {"name": args.model}
    train = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr),
                                ("seed", args.seed)) if v is not None}
    if args.progress:
        train["progress"] = True
    if train:
        conf["train"] = train
    store: dict[str, Any] = {}
    if args.store:
        store["backend"] = args.store
    optimizer = {k: v for k, v in (("name", args.emb_optimizer), ("lr", args.emb_lr)) if v is not None}
    if optimizer:
        store["optimizer"] = optimizer
    if store:
        conf["store"] = store
    return conf


def cmd_train(args: argparse.Namespace) -> int:
    from recemb.run import merge_config, run_training

    conf = load_config_file(args.config) if args.config else {}
    conf = merge_config(conf, _train_overrides(args)) if conf else _train_overrides(args)
    if args.nproc:
        from recemb.distributed.launch import launch_training

        return launch_training(conf, args.out, args.nproc, args.resume, args.plan, args.verbose)
    result = run_training(conf, out_dir=args.out, resume=args.resume)
    print(json.dumps(result.metrics))
    return 0


def _describe(cls: type) -> str:
    hints = typing.get_type_hints(cls)
    parts = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        parts.append(f"{f.name}: {getattr(hints[f.name], '__name__', str(hints[f.name]))} = {default!r}")
    return ", ".join(parts)


def cmd_kinds(args: argparse.Namespace) -> int:
    from recemb.tables import KINDS

    for name, cls in KINDS.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:16s} {doc}\n{'':16s} {_describe(cls)}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from recemb.models import MODELS

    for name, (cls, _) in MODELS.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:16s} {doc}\n{'':16s} {_describe(cls)}")
    return 0


# `make demo`: the full table, then the two hashed kinds at a tenth and a hundredth of its bytes
DEMO_TABLES = (
    "full:dim=16",
    "hashed:dim=16,budget_ratio=0.1",
    "unified:dim=16,budget_ratio=0.1",
    "hashed:dim=16,budget_ratio=0.01",
    "unified:dim=16,budget_ratio=0.01",
)


def cmd_demo(args: argparse.Namespace) -> int:
    from recemb.demo import run_demo

    print(json.dumps(run_demo(args.tables.split(";"), rows=args.rows, epochs=args.epochs)))
    return 0


def cmd_module(args: argparse.Namespace) -> int:
    """A command whose module has `run(args) -> dict`: its JSON is the last stdout line."""
    result = args.bench_run(args)
    print(json.dumps(result, default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recemb", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model; the last stdout line is a JSON object of test metrics")
    train.add_argument("--config", help="YAML or TOML file with sections data, split, table, model, train, store")
    train.add_argument(
        "--data",
        help="synthetic | synthetic:rows=N,... | NAME:PATH[?on_bad_lines=skip,...] with NAME one of criteo, "
        "avazu, frappe, movielens_100k, movielens_1m (a schema in data/), or csv:PATH?schema=FILE",
    )
    train.add_argument("--split", help="train,valid,test fractions in file order (default 0.7,0.1,0.2)")
    train.add_argument("--model", help="model name (see `recemb models`)")
    train.add_argument("--table", help="kind:key=value,... (see `recemb kinds`), e.g. full:dim=16")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float, help="dense (Adam) learning rate")
    train.add_argument("--emb-optimizer", help="sgd | adagrad | rowwise_adagrad | adam (fused into backward)")
    train.add_argument("--emb-lr", type=float, help="embedding learning rate")
    train.add_argument("--store", help="tbe (fbgemm, default) | reference (plain PyTorch) | torchrec (what --nproc shards)")
    train.add_argument(
        "--nproc",
        type=int,
        default=0,
        help="shard the tables over N processes of this machine with torchrun (torchrec "
        "DistributedModelParallel; gloo on CPU, nccl on GPUs); same JSON line last",
    )
    train.add_argument(
        "--plan",
        default="auto",
        choices=("auto", "table_wise", "column_wise", "row_wise", "data_parallel"),
        help="with --nproc: the torchrec planner's plan, or one sharding type for every table",
    )
    train.add_argument("--seed", type=int)
    train.add_argument("--out", help="run directory: checkpoint, run.json, vocabularies")
    train.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    train.add_argument("--progress", action="store_true", help="show a progress bar")
    train.set_defaults(func=cmd_train)

    sub.add_parser("kinds", help="list the table kinds and their settings").set_defaults(func=cmd_kinds)
    sub.add_parser("models", help="list the models and their settings").set_defaults(func=cmd_models)

    demo = sub.add_parser("demo", help="train AutoInt on synthetic data with several tables and compare")
    demo.add_argument("--tables", default=";".join(DEMO_TABLES), help="table settings separated by ';'")
    demo.add_argument("--rows", type=int, default=60_000)
    demo.add_argument("--epochs", type=int, default=2)
    demo.set_defaults(func=cmd_demo)

    for name, module_name, text in (
        ("plan", "recemb.plan", "propose a per-feature table configuration that fits a byte budget"),
        ("export", "recemb.export", "export a trained run's tables in compact (or int8) form for serving"),
    ):
        module = importlib.import_module(module_name)
        one = sub.add_parser(name, help=text)
        module.add_arguments(one)
        one.set_defaults(func=cmd_module, bench_run=module.run)

    bench = sub.add_parser("bench", help="benchmarks that print ratios measured in one run")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    for name, (module_name, text) in BENCHES.items():
        module = importlib.import_module(module_name)
        one = bench_sub.add_parser(name, help=text)
        module.add_arguments(one)
        one.set_defaults(func=cmd_module, bench_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, KeyError, TypeError, IndexError, FileNotFoundError) as e:
        if args.verbose:
            raise
        print(f"recemb {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
