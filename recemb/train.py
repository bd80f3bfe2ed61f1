"""Fit and evaluate a CTR model: dense weights by a torch optimizer, embedding rows by the
store's optimizer fused into backward; early stopping on validation AUC; atomic, resumable
checkpoints; seeded."""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from recemb import metrics
from recemb.data.batch import CTRData
from recemb.models.base import CTRModel

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    """How to train. `lr` is the dense (Adam) learning rate; embedding rows follow the
    store's optimizer (StoreSettings.optimizer)."""

    epochs: int = 1
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 2
    eval_batch_size: int = 8192
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.patience < 1:
            raise ValueError(f"TrainConfig.patience must be >= 1, got {self.patience}")


@dataclass
class History:
    """Per-epoch validation metrics and what training cost."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -math.inf  # validation AUC (or -loss when AUC is undefined)
    train_seconds: float = 0.0
    train_samples: int = 0

    @property
    def samples_per_s(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds else 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def predict(model: CTRModel, data: CTRData, batch_size: int = 8192) -> np.ndarray:
    """Click probabilities [N] in row order."""
    was_training = model.training
    model.eval()
    probs = [torch.sigmoid(model(b.sparse, b.dense)) for b in data.batches(batch_size)]
    model.train(was_training)
    return torch.cat(probs).numpy() if probs else np.zeros(0)


def evaluate(
    model: CTRModel, data: CTRData, batch_size: int = 8192, groups: torch.Tensor | np.ndarray | None = None
) -> dict[str, float]:
    """AUC and log loss on `data` (and the AUC's standard error, to read differences);
    with `groups` (a user id per row) also the group AUC, `gauc`."""
    labels = data.labels.numpy()
    probs = predict(model, data, batch_size)
    out = {"auc": metrics.auc(labels, probs), "logloss": metrics.logloss(labels, probs)}
    out["auc_se"] = metrics.auc_standard_error(labels, probs) if not math.isnan(out["auc"]) else math.nan
    if groups is not None:
        out["gauc"] = metrics.gauc(labels, probs, np.asarray(groups))
    return out


class TrainCallback:
    """Hooks of a kind's training stage into Trainer.fit (recemb.pruning.procedures): its own
    parameters (kept out of the trainer's Adam; the callback steps them), a penalty added to
    each batch's loss, and work after each step. The defaults do nothing."""

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def after_step(self) -> None:
        """After the trainer's optimizer step (the batch's gradients are still in place)."""


class Trainer:
    """Owns the dense optimizer, the epoch loop and the checkpoints of one run."""

    def __init__(
        self,
        model: CTRModel,
        cfg: TrainConfig,
        out_dir: str | Path | None = None,
        callbacks: Sequence[TrainCallback] = (),
    ) -> None:
        self.model, self.cfg = model, cfg
        self.out_dir = Path(out_dir) if out_dir else None
        self.callbacks = list(callbacks)
        owned = {id(p) for cb in self.callbacks for p in cb.parameters()}
        dense = [p for p in model.dense_parameters() if id(p) not in owned]
        self.optimizer = torch.optim.Adam(dense, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.history = History()
        self.best_state: dict | None = None
        self._store_prefix = next(
            name + "." for name, m in model.named_modules() if m is model.embedding.store
        )

    # -- state ------------------------------------------------------------------------------
    def _model_weights(self) -> dict:
        """Dense weights, and the store's weights and fused optimizer state (in the
        store-independent format, so a run saved with one store loads into another)."""
        dense = {k: v.clone() for k, v in self.model.state_dict().items() if not k.startswith(self._store_prefix)}
        return {"dense": dense, "store": self.model.embedding.store.store_state()}

    def _restore_weights(self, weights: dict) -> None:
        self.model.load_state_dict(weights["dense"], strict=False)
        self.model.embedding.store.load_store_state(weights["store"])

    def state(self) -> dict:
        """Everything needed to resume: weights, dense optimizer, history, best weights."""
        return {
            **self._model_weights(),
            "optimizer": self.optimizer.state_dict(),
            "history": self.history,
            "best_state": self.best_state,
        }

    def load_state(self, state: dict) -> None:
        self._restore_weights(state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = state["history"]
        self.best_state = state["best_state"]

    def save_checkpoint(self) -> None:
        """Write to a temp file, then rename: a crash never leaves a half-written checkpoint."""
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.out_dir / (CHECKPOINT + ".tmp")
        torch.save(self.state(), tmp)
        os.replace(tmp, self.out_dir / CHECKPOINT)

    def try_resume(self) -> bool:
        path = self.out_dir / CHECKPOINT if self.out_dir else None
        if path is None or not path.exists():
            return False
        self.load_state(torch.load(path, weights_only=False))
        log.info("resumed from %s after epoch %d", path, len(self.history.epochs))
        return True

    # -- training -------------------------------------------------------------------------------
    def baseline(self, valid: CTRData) -> float:
        """Count the current weights as epoch 0: `fit` keeps them unless an epoch scores
        better on `valid` (for fine-tuning a model that may already be at its best)."""
        scores = evaluate(self.model, valid, self.cfg.eval_batch_size)
        score = scores["auc"] if not math.isnan(scores["auc"]) else -scores["logloss"]
        self.history.best_score, self.history.best_epoch = score, 0
        self.best_state = self._model_weights()
        return score

    def fit(self, train: CTRData, valid: CTRData | None = None) -> History:
        """Train for cfg.epochs (resuming where a checkpoint left off), keep the epoch with
        the best validation AUC and restore its weights at the end."""
        if len(train) == 0:
            raise ValueError("the training split is empty")
        cfg, h = self.cfg, self.history
        seed_everything(cfg.seed)
        for epoch in range(len(h.epochs), cfg.epochs):
            self.model.train()
            start = time.perf_counter()
            batches = train.batches(cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch)
            total = math.ceil(len(train) / cfg.batch_size)
            losses = []
            for batch in tqdm(batches, total=total, desc=f"epoch {epoch + 1}", disable=not cfg.progress):
                loss = F.binary_cross_entropy_with_logits(self.model(batch.sparse, batch.dense), batch.labels)
                objective = loss
                for cb in self.callbacks:  # penalties of a kind's training stage
                    objective = cb.loss(objective)
                self.optimizer.zero_grad(set_to_none=True)
                objective.backward()  # the store's optimizer updates embedding rows here
                self.optimizer.step()
                for cb in self.callbacks:
                    cb.after_step()
                losses.append(loss.item())
            h.train_seconds += time.perf_counter() - start
            h.train_samples += len(train)
            record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses))}
            if valid is not None and len(valid):
                record.update({f"valid_{k}": v for k, v in evaluate(self.model, valid, cfg.eval_batch_size).items()})
            h.epochs.append(record)
            log.info("epoch %s", record)
            score = record.get("valid_auc", -record["train_loss"])
            if math.isnan(score):
                score = -record.get("valid_logloss", record["train_loss"])
            if score > h.best_score:
                h.best_score, h.best_epoch = score, epoch + 1
                self.best_state = self._model_weights()
            self.save_checkpoint()
            if epoch + 1 - h.best_epoch >= cfg.patience:
                log.info("early stop: no better validation AUC for %d epochs", cfg.patience)
                break
        if self.best_state is not None:
            self._restore_weights(self.best_state)
        return h
