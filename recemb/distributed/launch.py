"""Sharded training from the command line: torchrun starts one process per rank, each runs
`main` here.

    python -m torch.distributed.run --standalone --nproc-per-node 2 \\
        -m recemb.distributed.launch --config run.yaml --out runs/a

Every rank joins the process group torchrun describes (nccl with one GPU per rank where
CUDA is available, else gloo on the CPU) and runs recemb.distributed.run.run_training;
rank 0 prints the plan, the memory each rank holds, and last the JSON metrics line of
`recemb train`. `launch_training` starts torchrun for the CLI (`recemb train --nproc N`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from recemb.config import load_config_file
from recemb.distributed.plan import PLANS


def launch_training(
    conf: dict[str, Any],
    out_dir: str | Path | None = None,
    nproc: int = 2,
    resume: bool = False,
    plan: str = "auto",
    verbose: bool = False,
    capture: bool = False,
    threads: int | None = None,
) -> int | subprocess.CompletedProcess:
    """Train `conf` on `nproc` processes of this machine through torchrun; their output is
    this process's (the last stdout line is the metrics JSON), and torchrun's exit code is
    returned; with `capture`, the finished process with its stdout and stderr instead.
    Each process gets `threads` threads, by default OMP_NUM_THREADS or cores / nproc."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if plan not in PLANS:
        raise ValueError(f"plan must be one of {PLANS}, got {plan!r}")
    from recemb.distributed.run import check_config

    check_config(conf, resume)  # a bad config fails here, not in every process
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory(prefix="recemb-launch-") as tmp:
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps(conf))
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "recemb.distributed.launch", "--config", str(config), "--plan", plan,
        ]  # fmt: skip
        if out_dir is not None:
            cmd += ["--out", str(out_dir)]
        if resume:
            cmd.append("--resume")
        if verbose:
            cmd.append("--verbose")
        if capture:
            return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        return subprocess.run(cmd, env=env, check=False).returncode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recemb.distributed.launch", description=__doc__)
    parser.add_argument("--config", required=True, help="JSON, YAML or TOML run config (as `recemb train --config`)")
    parser.add_argument("--out", help="run directory: DCP checkpoints, run.json, plan.txt")
    parser.add_argument("--resume", action="store_true", help="continue from --out's checkpoint (any world size)")
    parser.add_argument("--plan", default="auto", choices=PLANS, help="auto (the planner's) or one sharding type")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return parser


def _read_config(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text()) if path.endswith(".json") else load_config_file(path)


def main(argv: list[str] | None = None) -> int:
    """One rank of a torchrun job."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:  # torchrec and torch warn about their own internals on every run
        logging.getLogger("torchrec").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    rank = dist.get_rank()
    try:
        from recemb.distributed.memory import format_memory
        from recemb.distributed.run import run_training

        result = run_training(_read_config(args.config), args.out, args.resume, args.plan)
        if rank == 0:
            print(result.plan)
            print(format_memory(result.ranks))
            print(json.dumps(result.metrics), flush=True)
        return 0
    except (ValueError, KeyError, TypeError, IndexError, FileNotFoundError) as e:
        if args.verbose:
            raise
        if rank == 0:
            print(f"recemb train: error: {e}", file=sys.stderr)
        return 2
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    code = main()
    # Leave without running C++ static destructors: a background thread of the process
    # group occasionally outlives it and aborts the rank at exit ("terminate called
    # without an active exception") after all its work and output are done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
