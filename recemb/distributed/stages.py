"""Staged kinds sharded: each stage of a recemb.pruning.procedures procedure trains under
DistributedModelParallel.

`ShardedStages` is the procedures' StageRunner over a process group: `prepare` shards each
stage's freshly built model (seeded shards, then the tables the stage is handed, one table
at a time), `fit` is DistributedTrainer.fit with the stage's callbacks, scoring is evaluate
and predict over ranks, and row norms are summed from the shards. The hand-offs between
stages stay consistent over ranks without any rank holding a whole sharded table:

- what a stage decides (OptEmbed's thresholds, kept ids, searched widths) is computed on
  every rank from replicated values: DDP-averaged parameters, all-reduced norms, and
  predictions that every rank gathers whole, so each rank scores every candidate of the
  search alike and takes the same decisions;
- what a stage restarts from (OptEmbed's initial tables) is regenerated from the store's
  seed, table by table, rather than kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from recemb.data import DataSplits
from recemb.data.batch import CTRData
from recemb.distributed.data import evaluate, predict
from recemb.distributed.plan import find_store
from recemb.distributed.shard import load_table_weights, shard_model, table_row_norms
from recemb.distributed.trainer import DistributedTrainer
from recemb.models.base import CTRModel
from recemb.pruning.procedures import StageRunner
from recemb.storage.torchrec_store import TorchrecStore
from recemb.train import History, TrainConfig


class SeededTables:
    """A torchrec store's initial (table, weights), drawn again from its seed each time it is
    iterated: what a later stage restarts from, without holding every table meanwhile."""

    def __init__(self, store: TorchrecStore) -> None:
        self.store = store

    def __iter__(self) -> Iterator[tuple[str, Tensor]]:
        return ((t.name, w) for t, w in self.store.iter_initial_weights())


class ShardedStages(StageRunner):
    """Every stage's model sharded by `plan` over `pg` (see the module docstring); `trainer`
    is the last stage's DistributedTrainer (its optimizers hold what each rank keeps)."""

    sharded = True

    def __init__(
        self, plan: str, batch_size: int, pg: dist.ProcessGroup | None = None, device: torch.device | None = None
    ) -> None:
        self.plan, self.batch_size, self.pg, self.device = plan, batch_size, pg, device
        self.trainer: DistributedTrainer | None = None

    def prepare(self, model: CTRModel, tables: Iterable[tuple[str, Tensor]] | None = None) -> nn.Module:
        dmp = shard_model(model, self.plan, self.batch_size, self.pg, self.device)
        if tables is not None:
            load_table_weights(dmp, iter(tables))
        return dmp

    def fit(
        self, module: nn.Module, cfg: TrainConfig, data: DataSplits, callbacks=(), baseline: bool = False
    ) -> History:
        if baseline:  # only dnis asks for it, and dnis is not sharded (procedures.UNSHARDED)
            raise NotImplementedError("a sharded stage cannot count the current weights as epoch 0 (baseline)")
        self.trainer = DistributedTrainer(module, cfg, None, self.pg, callbacks)  # type: ignore[arg-type]
        return self.trainer.fit(data.train, data.valid)

    def evaluate(self, module: nn.Module, data: CTRData, batch_size: int) -> dict[str, float]:
        return evaluate(module, data, batch_size, pg=self.pg)

    def predict(self, module: nn.Module, data: CTRData, batch_size: int) -> np.ndarray:
        return predict(module, data, batch_size, self.pg)

    def initial_tables(self, model: CTRModel) -> Iterable[tuple[str, Tensor]]:
        return SeededTables(find_store(model))

    def row_norms(self, module: nn.Module, model: CTRModel, tables: list[str]) -> dict[str, Tensor]:
        return table_row_norms(module, tables, self.pg)  # type: ignore[arg-type]
