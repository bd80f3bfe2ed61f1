"""Sharded training with torchrec: DistributedModelParallel over torch.distributed.

Every kind's physical tables sit in one torchrec store (recemb/storage/torchrec_store.py);
torchrec's planner shards them over the ranks, and the kind's id transform and combine and
the CTR model stay replicated (data-parallel under DDP). One file per concept:

    plan.py        the planner, sharders (row-wise on CPU too), forced plans, plan records
    shard.py       shard_model: DMP over a model, seeded shards; gather_table_weights, table_row_norms
    optim.py       RowOptimizer: the fused formulas for data-parallel tables
    state.py       TransformState: stateful id transforms kept consistent over ranks
    share.py       batch_share: the part of the global batch this rank trains on
    data.py        each rank's share of a global batch; evaluation over ranks
    trainer.py     DistributedTrainer: Trainer's loop over ranks, DCP checkpoints
    checkpoint.py  torch.distributed.checkpoint folders (save on N ranks, load on M)
    memory.py      what each rank holds
    stages.py      ShardedStages: a staged kind's procedure (OptEmbed) with every stage sharded
    run.py         run_training: recemb.run.run_training on every rank
    launch.py      the torchrun entry point, and launch_training (`recemb train --nproc N`)
    spawn.py       run_ranks: a function on a fresh local process group (tests)
    bench.py       `recemb bench distributed`: N processes vs 1 at the same global batch

The names below load their module (and torchrec's distributed package) on first use, so
that `recemb.distributed.share` stays cheap to import for table kinds.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PLANS": "plan",
    "SHARDING_TYPES": "plan",
    "describe_plan": "plan",
    "plan_model": "plan",
    "shard_model": "shard",
    "gather_table_weights": "shard",
    "table_row_norms": "shard",
    "ShardedStages": "stages",
    "RowOptimizer": "optim",
    "TransformState": "state",
    "batch_share": "share",
    "DistributedTrainer": "trainer",
    "DistributedRun": "run",
    "run_training": "run",
    "launch_training": "launch",
}
__all__ = [
    "PLANS",
    "SHARDING_TYPES",
    "DistributedRun",
    "DistributedTrainer",
    "RowOptimizer",
    "ShardedStages",
    "TransformState",
    "batch_share",
    "describe_plan",
    "gather_table_weights",
    "launch_training",
    "plan_model",
    "run_training",
    "shard_model",
    "table_row_norms",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'recemb.distributed' has no attribute {name!r}")
    return getattr(importlib.import_module(f"recemb.distributed.{_EXPORTS[name]}"), name)
