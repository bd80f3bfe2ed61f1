"""Sharding plans: torchrec's planner over every table of a model's torchrec store.

`plan="auto"` lets the planner choose; a sharding type (`table_wise`, `column_wise`,
`row_wise`, `data_parallel`) forces it on every table through ParameterConstraints. Where
a collection cannot take the forced type on this device (an EmbeddingCollection, which
holds the tables of sequence keys, is not data-parallel off CUDA), it falls back to
table-wise and the plan says so. A forced `column_wise` plan splits each table's columns
into shards of a multiple of 4 columns, about one per rank (see `column_block`), where the
planner alone keeps tables narrower than 128 columns whole.

The sharders answer `sharding_types` as for CUDA on the CPU too, so row-wise (and
table-row-wise, grid) plans run on gloo; those need equal batch sizes on every rank,
which recemb.distributed.data gives.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
from torchrec.distributed.types import ModuleSharder, ShardingPlan, ShardingType

from recemb.storage.torchrec_store import BAGS, TorchrecStore

log = logging.getLogger(__name__)

SHARDING_TYPES: tuple[str, ...] = ("table_wise", "column_wise", "row_wise", "data_parallel")
PLANS: tuple[str, ...] = ("auto", *SHARDING_TYPES)
COLUMN_MULTIPLE = 4  # fbgemm's TBE widths


class BagSharder(EmbeddingBagCollectionSharder):
    """The stock sharder, offering row-wise, table-row-wise and grid sharding on CPU too."""

    def sharding_types(self, compute_device_type: str) -> list[str]:
        return super().sharding_types("cuda")


class SequenceSharder(EmbeddingCollectionSharder):
    """The stock sharder, without data-parallel off CUDA (it fails there)."""

    def sharding_types(self, compute_device_type: str) -> list[str]:
        types = super().sharding_types(compute_device_type)
        if compute_device_type != "cuda":
            types = [t for t in types if t != ShardingType.DATA_PARALLEL.value]
        return types


def sharders(store: TorchrecStore) -> list[ModuleSharder[nn.Module]]:
    """Sharders whose fused optimizer is the store's (the same formulas as the TBE store)."""
    params = store.fused_params()
    return [BagSharder(fused_params=dict(params)), SequenceSharder(fused_params=dict(params))]


def find_store(model: nn.Module) -> TorchrecStore:
    stores = [m for m in model.modules() if isinstance(m, TorchrecStore)]
    if len(stores) != 1:
        kinds = sorted({type(m).__name__ for m in model.modules() if hasattr(m, "layout")})
        raise TypeError(
            f"a model to shard needs exactly one torchrec store (StoreSettings(backend='torchrec')), found "
            f"{len(stores)}; its stores: {kinds}"
        )
    return stores[0]


def constraints(
    store: TorchrecStore, plan: str, world_size: int, device_type: str
) -> dict[str, ParameterConstraints] | None:
    """Per torchrec table name, the sharding type `plan` forces (None for `auto`)."""
    if plan not in PLANS:
        raise ValueError(f"plan must be one of {PLANS}, got {plan!r}")
    if plan == "auto":
        return None
    out = {}
    for t in store.layout.tables:
        sharding = plan
        in_bags = store.collection_of(t.name) == BAGS
        if plan == "data_parallel" and not in_bags and device_type != "cuda":
            log.info("table %r (read as a sequence) is table-wise: data-parallel needs CUDA there", t.name)
            sharding = "table_wise"
        min_partition = None
        if sharding == "column_wise":
            min_partition = column_block(t.dim, world_size)
        out[store.torchrec_names[t.name]] = ParameterConstraints(sharding_types=[sharding], min_partition=min_partition)
    return out


def column_block(dim: int, world_size: int) -> int:
    """Columns per shard of a forced column-wise table: the widest multiple of 4 that divides
    `dim` and is at most dim / world_size (rounded up), so every rank can get a shard."""
    target = max(COLUMN_MULTIPLE, -(-dim // world_size))
    blocks = [b for b in range(COLUMN_MULTIPLE, dim + 1, COLUMN_MULTIPLE) if dim % b == 0 and b <= target]
    return max(blocks) if blocks else dim


def plan_model(
    model: nn.Module,
    plan: str = "auto",
    batch_size: int = 512,
    pg: dist.ProcessGroup | None = None,
    device: torch.device | None = None,
) -> ShardingPlan:
    """The planner's plan for the model's torchrec store, made on rank 0 and shared."""
    pg = pg or dist.GroupMember.WORLD
    world = dist.get_world_size(pg)
    device = device or torch.device("cpu")
    store = find_store(model)
    topology = TopologyFactory.create_topology(
        TrainerConfig(world_size=world, local_world_size=_local_world_size(world)),
        kernel_config=KernelConfig(compute_device=device.type),
    )
    planner = EmbeddingShardingPlanner(
        topology=topology,
        batch_size=batch_size,
        constraints=constraints(store, plan, world, device.type),
        debug=False,
    )
    return planner.collective_plan(model, sharders(store), pg)


def _local_world_size(world: int) -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", world))


def describe_plan(plan: ShardingPlan, store: TorchrecStore) -> list[dict[str, Any]]:
    """One record per table: its module, sharding type, kernel, ranks and shards."""
    by_torchrec = {v: k for k, v in store.torchrec_names.items()}
    records = []
    for module, params in plan.plan.items():
        for name, sharding in params.items():  # type: ignore[union-attr]
            spec = sharding.sharding_spec
            shards = [
                {"offsets": list(s.shard_offsets), "sizes": list(s.shard_sizes), "rank": s.placement.rank()}
                for s in (spec.shards if spec is not None else [])  # type: ignore[union-attr]
            ]
            records.append(
                {
                    "table": by_torchrec.get(name, name),
                    "module": module,
                    "sharding_type": sharding.sharding_type,
                    "compute_kernel": sharding.compute_kernel,
                    "ranks": list(sharding.ranks or []),
                    "shards": shards,
                }
            )
    return records
