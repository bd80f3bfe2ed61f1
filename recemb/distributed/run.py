"""recemb.run.run_training on every rank of a process group: data -> table -> model ->
shard -> fit -> test metrics, the same config and the same metrics.

Whatever store the config names, the tables go into a torchrec store (deferred: created
shard by shard) for the planner to shard; the store's optimizer and seed are kept. Every
rank builds the data (the readers and the synthetic generator are deterministic) and trains
on its share of each global batch (`train.batch_size` is the global batch). A kind trained in
stages (recemb.pruning.procedures) runs its procedure with every stage sharded
(recemb.distributed.stages), unless procedures.UNSHARDED says why it cannot. A kind that
`recemb export` reads gets its model.pt as in one process: its tables gathered whole to
rank 0 (without optimizer state).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from recemb.data import DataSplits, load_dataset
from recemb.distributed.data import evaluate
from recemb.distributed.memory import rank_memory
from recemb.distributed.plan import describe_plan, find_store
from recemb.distributed.shard import gather_table_weights, shard_model
from recemb.distributed.stages import ShardedStages
from recemb.distributed.trainer import DistributedTrainer
from recemb.models import build_model
from recemb.pruning.procedures import PROCEDURES, UNSHARDED, StageContext, exports, save_trained
from recemb.run import resolve_config, run_metrics, write_run_record
from recemb.storage import StoreSettings
from recemb.tables import build_embedding
from recemb.train import TrainConfig, seed_everything

log = logging.getLogger(__name__)
PLAN_FILE = "plan.txt"


@dataclass
class DistributedRun:
    metrics: dict[str, Any]  # the JSON line, as recemb.run.run_training's
    plan: str  # the planner's plan, as torchrec prints it
    tables: list[dict[str, Any]]  # per table: sharding type, kernel, ranks, shards
    ranks: list[dict[str, Any]]  # per rank: bytes held (recemb.distributed.memory)


def default_device() -> torch.device:
    """This rank's GPU under nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def check_config(
    conf: dict[str, Any], resume: bool = False
) -> tuple[dict[str, Any], TrainConfig, StoreSettings, Any, Any]:
    """resolve_config, refusing what a sharded run cannot do (before any process starts)."""
    resolved = resolve_config(conf)
    kind = resolved[3].kind
    if kind in UNSHARDED:
        raise ValueError(f"table kind {kind!r} trains in stages that cannot run sharded: {UNSHARDED[kind]}")
    if kind in PROCEDURES and resume:
        raise ValueError(
            f"resume is not supported for table kind {kind!r}, whose training runs in stages; start the run again"
        )
    return resolved


def run_training(
    conf: dict[str, Any],
    out_dir: str | Path | None = None,
    resume: bool = False,
    plan: str = "auto",
    data: DataSplits | None = None,
    pg: dist.ProcessGroup | None = None,
    device: torch.device | None = None,
) -> DistributedRun:
    """Train the configured model sharded over `pg` (a collective: every rank calls it)."""
    conf, train_cfg, settings, table_cfg, model_cfg = check_config(conf, resume)
    device = device or default_device()
    world = dist.get_world_size(pg)
    if settings.backend != "torchrec":
        log.info("store backend %r replaced by 'torchrec' (sharded)", settings.backend)
    settings = dataclasses.replace(settings, backend="torchrec", device="meta")
    batch_per_rank = max(1, train_cfg.batch_size // world)

    data = data or load_dataset(conf["data"], tuple(conf["split"]))
    procedure = PROCEDURES.get(table_cfg.kind)
    stages: dict[str, dict[str, Any]] = {}
    arch: dict | None = None
    if procedure is None:
        seed_everything(train_cfg.seed)
        embedding = build_embedding(data.train.schema, table_cfg, settings)
        model = build_model(embedding, model_cfg)
        memory = embedding.memory()  # the whole model's tables, as a single process reports them
        dmp = shard_model(model, plan, batch_per_rank, pg, device)
        trainer = DistributedTrainer(dmp, train_cfg, out_dir, pg)
        if resume:
            trainer.try_resume()
        history = trainer.fit(data.train, data.valid)
    else:
        runner = ShardedStages(plan, batch_per_rank, pg, device)
        staged = procedure(StageContext(data, table_cfg, model_cfg, train_cfg, settings, runner))
        dmp, trainer = staged.module, runner.trainer  # the last stage's
        model, history, stages, arch = staged.model, staged.history, staged.stages, staged.arch
        memory = model.embedding.memory()  # the last stage's tables, as a single process reports them

    test = evaluate(dmp, data.test, train_cfg.eval_batch_size, data.groups.get("test"), pg)
    metrics = run_metrics(test, memory, history, data, table_cfg, model_cfg)
    if stages:
        metrics["stages"] = stages  # as recemb.run: each stage's test AUC, log loss and bytes
    result = DistributedRun(
        metrics, str(dmp.plan), describe_plan(dmp.plan, find_store(dmp.module)), rank_memory(dmp, trainer.optimizer, pg)
    )
    # every rank: the gather is a collective (all tables to every rank; fine for what exports)
    tables = gather_table_weights(dmp, pg) if out_dir is not None and exports(model) else None
    if out_dir is not None and dist.get_rank(pg) == 0:
        out = Path(out_dir)
        used = dataclasses.replace(settings, device=str(device))
        extra = {
            "distributed": {
                "world_size": world,
                "backend": dist.get_backend(pg),
                "plan_requested": plan,
                "tables": result.tables,
                "ranks": result.ranks,
            }
        }
        write_run_record(out, conf, table_cfg, model_cfg, train_cfg, used, data, history, metrics, extra)
        (out / PLAN_FILE).write_text(result.plan + "\n")
        if tables is not None:
            save_trained(out, model, arch, state=dmp.state_dict(), tables=tables)
    return result
