"""Shard a model: DistributedModelParallel over its torchrec store, seeded tables.

The planner shards the store's collections; everything else (the kind's id transform and
combine, the CTR model) is replicated and data-parallel (DMP wraps it in DDP). The shards
then get the store's seeded initial weights, the values every other store starts from,
one table at a time, so no rank ever holds more than one whole table.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import ShardingEnv

from recemb.distributed.plan import describe_plan, find_store, plan_model, sharders
from recemb.storage.torchrec_store import BAGS

log = logging.getLogger(__name__)


def shard_model(
    model: nn.Module,
    plan: str = "auto",
    batch_size: int = 512,
    pg: dist.ProcessGroup | None = None,
    device: torch.device | None = None,
) -> DistributedModelParallel:
    """`model` (whose embedding has a torchrec store, best deferred: device='meta') sharded
    by the planner (`plan`: auto or a forced sharding type) over `pg`."""
    pg = pg or dist.GroupMember.WORLD
    device = device or torch.device("cpu")
    store = find_store(model)
    if store.optimizer.name == "adam" and device.type != "cuda":
        raise ValueError(
            "EmbeddingOptimizer.name='adam' needs CUDA for sharded tables; use sgd, adagrad or rowwise_adagrad"
        )
    sharding_plan = plan_model(model, plan, batch_size, pg, device)
    if store.optimizer.name == "rowwise_adagrad":
        split = [
            t["table"]
            for t in describe_plan(sharding_plan, store)
            if t["sharding_type"] in ("column_wise", "table_column_wise") and len(t["shards"]) > 1
        ]
        if split:
            log.warning(
                "tables %s are split by columns: fbgemm's row-wise Adagrad keeps one accumulator per row of each "
                "column shard, so these tables train differently from the unsharded model",
                split,
            )
    dmp = DistributedModelParallel(
        model, env=ShardingEnv.from_process_group(pg), device=device, plan=sharding_plan, sharders=sharders(store)
    )
    load_table_weights(dmp, ((t.name, w) for t, w in store.iter_initial_weights()))
    return dmp


def local_tensors(value: object) -> list[Tensor]:
    """The tensors of a state-dict entry that this rank holds: its shards of a ShardedTensor,
    or the tensor itself."""
    if isinstance(value, ShardedTensor):
        return [s.tensor for s in value.local_shards()]
    return [value] if isinstance(value, Tensor) else []


def table_tensors(dmp: DistributedModelParallel) -> Iterator[tuple[str, Tensor]]:
    """(table name, its state tensor here): a ShardedTensor of this rank's shards, or the
    whole table for a data-parallel one."""
    store = find_store(dmp.module)
    names = {v: k for k, v in store.torchrec_names.items()}
    for name, module in store.collections.items():
        prefix = "embedding_bags." if name == BAGS else "embeddings."
        for key, value in module.state_dict().items():
            if key.startswith(prefix) and key.endswith(".weight"):
                yield names[key[len(prefix) : -len(".weight")]], value


@torch.no_grad()
def load_table_weights(dmp: DistributedModelParallel, weights: Iterator[tuple[str, Tensor]]) -> None:
    """Copy whole tables, (name, [rows, dim]) one at a time, into this rank's shards."""
    targets = dict(table_tensors(dmp))
    for name, full in weights:
        target = targets.pop(name)
        if isinstance(target, ShardedTensor):
            for shard in target.local_shards():
                (r, c), (h, w) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                shard.tensor.copy_(full[r : r + h, c : c + w])
        else:
            target.copy_(full)
    if targets:
        raise KeyError(f"no weights given for tables {sorted(targets)}")


def gather_table_weights(dmp: DistributedModelParallel, pg: dist.ProcessGroup | None = None) -> dict[str, Tensor]:
    """Every table whole, on every rank (a collective: every rank calls it)."""
    store = find_store(dmp.module)
    local = {}
    for name, value in table_tensors(dmp):
        if isinstance(value, ShardedTensor):
            local[name] = [
                (tuple(s.metadata.shard_offsets), s.tensor.detach().cpu().clone()) for s in value.local_shards()
            ]
        else:
            local[name] = [((0, 0), value.detach().cpu().clone())]
    gathered: list[dict[str, list]] = [{} for _ in range(dist.get_world_size(pg))]
    dist.all_gather_object(gathered, local, group=pg)
    out = {}
    for t in store.layout.tables:
        full = torch.full((t.rows, t.dim), float("nan"))
        for per_rank in gathered:
            for (r, c), tensor in per_rank.get(t.name, []):
                full[r : r + tensor.shape[0], c : c + tensor.shape[1]] = tensor
        out[t.name] = full
    return out


@torch.no_grad()
def table_row_norms(
    dmp: DistributedModelParallel, tables: list[str], pg: dist.ProcessGroup | None = None
) -> dict[str, Tensor]:
    """The L1 norm of every row of each of `tables` [rows], on every rank (a collective:
    every rank calls it with the same tables). Each rank sums |w| over the columns of its
    own shards and one all-reduce per table adds the parts, so no rank ever holds a whole
    sharded table (as gathering it would): row-wise shards give disjoint rows, column-wise
    ones partial sums of the same rows. A data-parallel table is whole on every rank."""
    store = find_store(dmp.module)
    held = dict(table_tensors(dmp))
    out = {}
    for name in tables:
        value = held[name]
        if not isinstance(value, ShardedTensor):
            out[name] = value.detach().abs().sum(1).cpu()
            continue
        device = value.local_shards()[0].tensor.device if value.local_shards() else _collective_device(pg)
        norms = torch.zeros(store.layout.table(name).rows, device=device)
        for shard in value.local_shards():
            row, rows = shard.metadata.shard_offsets[0], shard.metadata.shard_sizes[0]
            norms[row : row + rows] += shard.tensor.detach().abs().sum(1)
        dist.all_reduce(norms, group=pg)
        out[name] = norms.cpu()
    return out


def _collective_device(pg: dist.ProcessGroup | None) -> torch.device:
    """Where this rank's tensors for a collective live: its GPU under nccl, else the CPU."""
    if dist.get_backend(pg) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
