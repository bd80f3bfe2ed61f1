"""What each rank holds: its table shards, their optimizer state, the replicated rest.

Counted from the tensors each rank actually holds (its shards of sharded tables, whole
data-parallel tables), not from the planner's estimate, plus the process's peak memory.
"""

from __future__ import annotations

import resource
import sys
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torchrec.distributed.model_parallel import DistributedModelParallel

from recemb.distributed.plan import find_store
from recemb.distributed.shard import local_tensors


def _bytes(tensors: list[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def rank_memory(
    model: DistributedModelParallel, optimizer: torch.optim.Optimizer, pg: dist.ProcessGroup | None = None
) -> list[dict[str, Any]]:
    """Per rank (on every rank; a collective): bytes of table weights, their optimizer
    state, dense weights, dense optimizer state, and peak resident memory."""
    store = find_store(model.module)
    prefix = next(name for name, m in model.module.named_modules() if m is store) + ".collections."
    mine = {"rank": dist.get_rank(pg), "table_bytes": 0, "table_optimizer_bytes": 0, "dense_bytes": 0,
            "dense_optimizer_bytes": 0}  # fmt: skip
    for key, value in model.state_dict().items():
        mine["table_bytes" if key.startswith(prefix) else "dense_bytes"] += _bytes(local_tensors(value))
    for key, states in optimizer.state_dict()["state"].items():
        tensors = [t for v in states.values() for t in local_tensors(v)]
        mine["table_optimizer_bytes" if key.startswith(prefix) else "dense_optimizer_bytes"] += _bytes(tensors)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mine["peak_rss_bytes"] = rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        mine["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    everyone: list[Any] = [None] * dist.get_world_size(pg)
    dist.all_gather_object(everyone, mine, group=pg)
    return everyone


def format_memory(ranks: list[dict[str, Any]]) -> str:
    """A small table, one line per rank."""
    columns = [k for k in ranks[0] if k != "rank"]
    lines = ["rank | " + " | ".join(c.removesuffix("_bytes") for c in columns)]
    for r in ranks:
        lines.append(f"{r['rank']:4d} | " + " | ".join(_size(r[c]) for c in columns))
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.2f} GiB"
