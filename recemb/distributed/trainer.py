"""recemb.train.Trainer for a sharded model: the same loop, optimizers and early stopping,
over ranks.

Three optimizers, as one torchrec CombinedOptimizer (its state dict is keyed by parameter
name, so DCP can save and reshard it): Adam on the dense parameters (DDP averages their
gradients); the store's optimizer fused into fbgemm's backward on the sharded tables
(torchrec divides their gradients by the number of ranks); and the same formulas after
backward on data-parallel tables (`RowOptimizer`). With every rank's mean loss over an
equal share of the global batch, one step equals one single-process step on the global batch.

A staged kind's `TrainCallback`s (recemb.pruning.procedures) hook in as in Trainer: their
parameters stay out of the dense Adam (DDP still averages their gradients, since they are
the replicated model's), their penalty is added to every rank's loss (so its averaged
gradient is the single process's), and they step after the optimizers.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from tqdm import tqdm

from recemb.data.batch import Batch, CTRData
from recemb.distributed import checkpoint
from recemb.distributed.data import evaluate, rank_batches, rank_samples
from recemb.distributed.optim import RowOptimizer
from recemb.distributed.plan import find_store
from recemb.distributed.shard import local_tensors
from recemb.distributed.share import sharing
from recemb.distributed.state import TransformState
from recemb.train import History, TrainCallback, TrainConfig, seed_everything

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint"  # folders under the run directory
BEST = "best"


class DistributedTrainer:
    """Owns the optimizers, the epoch loop and the DCP checkpoints of one sharded run."""

    def __init__(
        self,
        model: DistributedModelParallel,
        cfg: TrainConfig,
        out_dir: str | Path | None = None,
        pg: dist.ProcessGroup | None = None,
        callbacks: Sequence[TrainCallback] = (),
    ) -> None:
        self.model, self.cfg, self.pg = model, cfg, pg
        self.callbacks = list(callbacks)
        self.rank, self.world = dist.get_rank(pg), dist.get_world_size(pg)
        self.out_dir = Path(out_dir) if out_dir else None
        self.device = next(iter(model.parameters())).device
        store = find_store(model.module)
        prefix = next(name for name, m in model.module.named_modules() if m is store) + ".collections."
        unfused = dict(in_backward_optimizer_filter(model.named_parameters()))  # sharded tables update in backward
        tables = {k: p for k, p in unfused.items() if k.startswith(prefix)}  # data-parallel tables
        owned = {id(p) for cb in self.callbacks for p in cb.parameters()}  # the callbacks step these
        dense = {k: p for k, p in unfused.items() if not k.startswith(prefix) and id(p) not in owned}
        self.dense_optimizer = KeyedOptimizerWrapper(
            dense, lambda params: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        )
        parts = [self.dense_optimizer, model.fused_optimizer]
        if tables:
            names = [k.split(".")[-2] for k in tables]  # ...embedding_bags.<table>.weight
            parts.append(KeyedOptimizerWrapper(tables, lambda params: RowOptimizer(params, store.optimizer, names)))
        self.optimizer = CombinedOptimizer(parts)
        self.transform_state = TransformState(model.module, pg)
        self.history = History()
        self.best_weights: dict[str, list[Tensor]] | None = None

    # -- one step ------------------------------------------------------------------------------
    def train_step(self, batch: Batch) -> float:
        """Forward, backward (the sharded tables update here), the other optimizers, the
        callbacks; this rank's mean loss (without the callbacks' penalties)."""
        batch = self._to_device(batch)
        with sharing(self.rank, self.world):  # per-sample draws: this rank's rows of the global batch's
            loss = F.binary_cross_entropy_with_logits(self.model(batch.sparse, batch.dense), batch.labels)
            objective = loss
            for cb in self.callbacks:  # penalties of a kind's training stage
                objective = cb.loss(objective)
            self.optimizer.zero_grad()
            objective.backward()
        self.optimizer.step()
        for cb in self.callbacks:
            cb.after_step()
        self.transform_state.sync()
        return loss.item()

    def _to_device(self, batch: Batch) -> Batch:
        if self.device.type == "cpu":
            return batch
        return Batch(batch.sparse.to(self.device), batch.dense.to(self.device), batch.labels.to(self.device))

    # -- weights, locally ----------------------------------------------------------------------
    @torch.no_grad()
    def snapshot(self) -> dict[str, list[Tensor]]:
        """A copy of this rank's part of every weight (its shards, the replicated rest)."""
        return {
            k: [t.clone() for t in local_tensors(v)] for k, v in self.model.state_dict().items() if local_tensors(v)
        }

    @torch.no_grad()
    def restore(self, weights: dict[str, list[Tensor]]) -> None:
        for k, v in self.model.state_dict().items():
            for target, saved in zip(local_tensors(v), weights.get(k, [])):
                target.copy_(saved)

    # -- checkpoints -----------------------------------------------------------------------------
    def _state(self, with_optimizer: bool = True) -> dict[str, Any]:
        state: dict[str, Any] = {"model": self.model.state_dict()}
        if with_optimizer:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def save_checkpoint(self, path: str | Path) -> None:
        """Weights, every optimizer's state and the history, in a DCP folder (a collective)."""
        checkpoint.save(path, self._state(), {"history": asdict(self.history)}, self.pg)

    def load_checkpoint(self, path: str | Path) -> None:
        """Load a checkpoint saved by any number of ranks, with any plan (a collective)."""
        if not self.dense_optimizer.state:
            self.dense_optimizer.init_state()  # Adam's state is lazy: make the tensors to load into
        state = self._state()
        extra = checkpoint.load(path, state, self.pg)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = History(**extra["history"])
        self.transform_state.reset()

    def try_resume(self) -> bool:
        """Continue from `out_dir`'s checkpoint, if there is one."""
        if self.out_dir is None or not checkpoint.exists(self.out_dir / CHECKPOINT):
            return False
        if checkpoint.exists(self.out_dir / BEST):
            best = self._state(with_optimizer=False)
            checkpoint.load(self.out_dir / BEST, best, self.pg)
            self.model.load_state_dict(best["model"])
            self.best_weights = self.snapshot()
        self.load_checkpoint(self.out_dir / CHECKPOINT)
        log.info("resumed from %s after epoch %d", self.out_dir / CHECKPOINT, len(self.history.epochs))
        return True

    # -- training ------------------------------------------------------------------------------------
    def fit(self, train: CTRData, valid: CTRData | None = None) -> History:
        """Trainer.fit over ranks: each rank trains on its share of every global batch."""
        if len(train) == 0:
            raise ValueError("the training split is empty")
        cfg, h = self.cfg, self.history
        seed_everything(cfg.seed)
        for epoch in range(len(h.epochs), cfg.epochs):
            self.model.train()
            dist.barrier(group=self.pg)
            start = time.perf_counter()
            batches = rank_batches(train, cfg.batch_size, self.rank, self.world, True, cfg.seed * 1000 + epoch)
            total = math.ceil(len(train) / cfg.batch_size)
            quiet = not cfg.progress or self.rank != 0
            losses = [self.train_step(b) for b in tqdm(batches, total=total, desc=f"epoch {epoch + 1}", disable=quiet)]
            dist.barrier(group=self.pg)
            h.train_seconds += time.perf_counter() - start
            h.train_samples += rank_samples(len(train), cfg.batch_size, self.world)
            self.transform_state.check()
            record: dict[str, float] = {"epoch": epoch + 1, "train_loss": self._mean_over_ranks(losses)}
            if valid is not None and len(valid):
                scores = evaluate(self.model, valid, cfg.eval_batch_size, pg=self.pg)
                record.update({f"valid_{k}": v for k, v in scores.items()})
            h.epochs.append(record)
            log.info("epoch %s", record)
            score = record.get("valid_auc", -record["train_loss"])
            if math.isnan(score):
                score = -record.get("valid_logloss", record["train_loss"])
            if score > h.best_score:  # every rank has the same scores, so takes the same decisions
                h.best_score, h.best_epoch = score, epoch + 1
                self.best_weights = self.snapshot()
                if self.out_dir is not None:
                    checkpoint.save(self.out_dir / BEST, self._state(with_optimizer=False), {"history": {}}, self.pg)
            if self.out_dir is not None:
                self.save_checkpoint(self.out_dir / CHECKPOINT)
            if epoch + 1 - h.best_epoch >= cfg.patience:
                log.info("early stop: no better validation AUC for %d epochs", cfg.patience)
                break
        if self.best_weights is not None:
            self.restore(self.best_weights)
        return h

    def _mean_over_ranks(self, losses: list[float]) -> float:
        """The mean loss of the epoch's steps over every rank (equal batches: the global mean)."""
        total = torch.tensor([float(np.sum(losses)), float(len(losses))], dtype=torch.float64, device=self.device)
        dist.all_reduce(total, group=self.pg)
        return float(total[0] / total[1]) if total[1] else math.nan
