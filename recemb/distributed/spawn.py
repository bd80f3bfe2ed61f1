"""Run a function on every rank of a fresh local gloo process group (tests, examples).

Starting processes and a process group costs seconds on a small machine, so a caller runs
many checks inside one `run_ranks` call and has each rank return its results.
"""

from __future__ import annotations

import datetime
import os
import queue
import socket
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(
    rank: int, world: int, port: int, results: Any, fn: Callable[..., Any], args: tuple, collective_timeout: float
) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=collective_timeout),  # a rank left waiting fails, not hangs
        )
        try:
            results.put((rank, "ok", fn(rank, world, *args)))
        finally:
            dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 (sent to the caller, which raises it)
        results.put((rank, "error", traceback.format_exc()))


def run_ranks(
    fn: Callable[..., Any], world: int = 2, *args: Any, timeout: float = 600.0, collective_timeout: float = 60.0
) -> list[Any]:
    """`fn(rank, world, *args)` on `world` new processes joined in a gloo group (one thread
    each); each rank's return value (picklable), in rank order. `fn` must be importable
    by name (a module-level function). A collective that waits longer than
    `collective_timeout` seconds (a rank that failed and left the others waiting) raises."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_rank_main, args=(r, world, port, results, fn, args, collective_timeout), daemon=True)
        for r in range(world)
    ]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    errors = []
    try:
        for _ in range(world):
            rank, status, value = results.get(timeout=timeout)
            if status == "ok":
                out[rank] = value
            else:
                errors.append(f"rank {rank}:\n{value}")
    except queue.Empty:
        errors.append(f"no result from ranks {sorted(set(range(world)) - set(out))} within {timeout:.0f} s")
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    if errors:
        raise RuntimeError("\n".join(errors))
    return [out[r] for r in range(world)]
