"""Checkpoints of a sharded run through torch.distributed.checkpoint (DCP).

Each rank writes its own shards (tables, fused optimizer state) and rank 0 the replicated
tensors once; a checkpoint loads into any number of ranks and any plan (DCP reshards), and
into one process too. A checkpoint is a folder: DCP's files plus `trainer.json` (what is not
a tensor: the history). It is written to `<name>.tmp` and renamed when complete, so a crash
never leaves a half-written one. All ranks must see the same folder (a shared file system
when the ranks are on several hosts).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp

EXTRA = "trainer.json"


def save(path: str | Path, state: dict[str, Any], extra: dict[str, Any], pg: dist.ProcessGroup | None = None) -> None:
    """Write `state` (state dicts: tensors, ShardedTensors) and `extra` (JSON) to `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    rank = dist.get_rank(pg)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier(group=pg)
    dcp.save(state, checkpoint_id=str(tmp), process_group=pg)
    if rank == 0:
        (tmp / EXTRA).write_text(json.dumps(extra, indent=1))
        old = path.with_name(path.name + ".old")
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier(group=pg)


def load(path: str | Path, state: dict[str, Any], pg: dist.ProcessGroup | None = None) -> dict[str, Any]:
    """Fill `state` (this run's state dicts, whose tensors are overwritten in place) from
    `path`, and return its `extra`."""
    path = Path(path)
    if not (path / EXTRA).exists():
        raise FileNotFoundError(f"{str(path)!r} is not a recemb distributed checkpoint (no {EXTRA})")
    dcp.load(state, checkpoint_id=str(path), process_group=pg)
    return json.loads((path / EXTRA).read_text())


def exists(path: str | Path) -> bool:
    return (Path(path) / EXTRA).exists()
