"""Multi-stage training of the searching kinds, which `run_training` hands them to.

optembed: (1) supernet training with row pruning and sampled widths (the thresholds' penalty
and own Adam by `ThresholdCallback`); (2) evolutionary search of per-table widths on
validation AUC under the budget, with the supernet's weights and row masks; (3) retraining
from the initial weights (saved before stage 1) with the kept rows and widths fixed, on the
compact tables. A table whose int32 remap would cost more than its pruned rows save (fewer
than 1 in `width` rows pruned) keeps every row: the search costs each table the cheaper way.
dnis: (1) training with the soft selection α (`SelectionCallback`: on batches of the first
half of the validation rows, epochs chosen on the second half; or jointly); (2) magnitude
pruning of α to the target; (3) fine-tuning with α fixed, which keeps the pruned weights
unless an epoch beats them on validation.
Each stage reports its test AUC, log loss and bytes (for stages after the first, what the
export's fp32 tables take); the last stage's model is the run's model.

A procedure trains, scores and hands weights between stages only through its `StageRunner`:
this process's (the class here), or recemb.distributed.stages.ShardedStages, which shards
every stage's model over the ranks of a process group; so one procedure serves both.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recemb import metrics
from recemb.data import DataSplits
from recemb.data.batch import Batch, CTRData
from recemb.models import build_model
from recemb.models.base import CTRModel
from recemb.pruning.evolution import BudgetError, EvolutionConfig, evolve
from recemb.storage import StoreSettings
from recemb.storage.layout import BYTES_PER_FLOAT
from recemb.tables import build_embedding
from recemb.tables.budget import budget_floats
from recemb.tables.dnis import Dnis, DnisEmbedding
from recemb.tables.optembed import OptEmbed, OptEmbedArch, OptEmbedEmbedding, serving_bytes
from recemb.train import History, TrainCallback, TrainConfig, Trainer, evaluate, predict, seed_everything

log = logging.getLogger(__name__)
MODEL_FILE = "model.pt"


class StageRunner:
    """Where a procedure's stages train and are scored: in this process. Each method takes
    and returns what `prepare` made of a model (here the model itself), so a runner that
    shards (recemb.distributed.stages.ShardedStages) overrides these and nothing else."""

    sharded: bool = False

    def prepare(self, model: CTRModel, tables: Iterable[tuple[str, Tensor]] | None = None) -> nn.Module:
        """The trainable form of a freshly built `model`; `tables` (name, weights), when
        given, replace its store's initial weights."""
        if tables is not None:
            model.embedding.store.load_table_weights(dict(tables))
        return model

    def fit(
        self, module: nn.Module, cfg: TrainConfig, data: DataSplits, callbacks=(), baseline: bool = False
    ) -> History:
        """Train on data.train, choosing the epoch on data.valid; with `baseline`, the
        current weights count as epoch 0 (kept unless an epoch beats them)."""
        trainer = Trainer(module, cfg, None, callbacks)  # type: ignore[arg-type]
        if baseline:
            trainer.baseline(data.valid)
        return trainer.fit(data.train, data.valid)

    def evaluate(self, module: nn.Module, data: CTRData, batch_size: int) -> dict[str, float]:
        return evaluate(module, data, batch_size)  # type: ignore[arg-type]

    def predict(self, module: nn.Module, data: CTRData, batch_size: int) -> np.ndarray:
        return predict(module, data, batch_size)  # type: ignore[arg-type]

    def initial_tables(self, model: CTRModel) -> Iterable[tuple[str, Tensor]]:
        """(table, weights) of the freshly built model, to restart a later stage from; an
        iterable that may be read more than once (here a copy taken now; ShardedStages
        draws the tables again from the store's seed each time)."""
        return list(model.embedding.store.table_weights().items())

    def row_norms(self, module: nn.Module, model: CTRModel, tables: list[str]) -> dict[str, Tensor]:
        """The L1 norm of every row [rows] of each of `tables`."""
        weights = model.embedding.store.table_weights()
        return {t: weights[t].abs().sum(1) for t in tables}


@dataclass
class StageContext:
    data: DataSplits
    table_cfg: Any
    model_cfg: Any
    train_cfg: TrainConfig
    settings: StoreSettings
    runner: StageRunner = field(default_factory=StageRunner)


@dataclass
class StagedResult:
    model: CTRModel
    history: History  # of the last stage
    stages: dict[str, dict[str, Any]]
    arch: dict | None = None  # what rebuilding the final model needs beyond its config
    module: nn.Module | None = None  # the final model as the runner trained it (None: the model itself)


# -- callbacks ----------------------------------------------------------------------------------
class ThresholdCallback(TrainCallback):
    """OptEmbed's thresholds: α·Σ exp(−t) added to the loss, their own Adam."""

    def __init__(self, embedding: OptEmbedEmbedding, cfg: OptEmbed) -> None:
        self.thresholds = embedding.thresholds
        self.penalty = cfg.penalty
        self.optimizer = (
            torch.optim.Adam([self.thresholds], lr=cfg.threshold_lr) if self.thresholds is not None else None
        )

    def parameters(self) -> list[torch.nn.Parameter]:
        return [] if self.thresholds is None else [self.thresholds]

    def loss(self, loss: torch.Tensor) -> torch.Tensor:
        if self.thresholds is None or not self.penalty:
            return loss
        return loss + self.penalty * torch.exp(-self.thresholds).sum()

    def after_step(self) -> None:
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)


class SelectionCallback(TrainCallback):
    """DNIS's α: after each training step, one Adam step on a validation batch's loss (the
    rows frozen) in `bilevel` mode, or on the training loss in `joint` mode; then α is
    clipped to [0, 1]."""

    def __init__(self, model: CTRModel, embedding: DnisEmbedding, cfg: Dnis, valid: CTRData, batch_size: int) -> None:
        self.model, self.embedding, self.mode = model, embedding, cfg.mode
        self.optimizer = torch.optim.Adam([embedding.selection], lr=cfg.selection_lr)
        self._valid = _cycle(valid, batch_size) if cfg.mode == "bilevel" and len(valid) else None

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.embedding.selection]

    def after_step(self) -> None:
        alpha = self.embedding.selection
        if self._valid is not None:
            alpha.grad = None
            batch = next(self._valid)
            with self.embedding.frozen_rows():
                loss = F.binary_cross_entropy_with_logits(self.model(batch.sparse, batch.dense), batch.labels)
                loss.backward()
            for p in self.model.parameters():  # only α learns from validation data
                if p is not alpha:
                    p.grad = None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            alpha.clamp_(0.0, 1.0)


def _cycle(data: CTRData, batch_size: int) -> Iterator[Batch]:
    for epoch in itertools.count():
        yield from data.batches(batch_size, shuffle=True, seed=10_007 + epoch)


# -- reporting -----------------------------------------------------------------------------------
def stage_report(
    model: nn.Module,
    data: DataSplits,
    history: History | None,
    bytes_: int,
    cfg: TrainConfig,
    runner: StageRunner | None = None,
) -> dict:
    test = (runner or StageRunner()).evaluate(model, data.test, cfg.eval_batch_size)
    out = {"auc": test["auc"], "logloss": test["logloss"], "bytes": int(bytes_)}
    if history is not None:
        best = history.epochs[history.best_epoch - 1] if history.best_epoch > 0 else {}
        out.update(
            valid_auc=best.get("valid_auc"),
            best_epoch=history.best_epoch,
            samples_per_s=history.samples_per_s,
            train_seconds=history.train_seconds,
        )
    return out


def _epochs(cfg: TrainConfig, epochs: int) -> TrainConfig:
    return dataclasses.replace(cfg, epochs=epochs or cfg.epochs)


# -- optembed -----------------------------------------------------------------------------------
def run_optembed(ctx: StageContext) -> StagedResult:
    cfg: OptEmbed = ctx.table_cfg
    data, schema, runner = ctx.data, ctx.data.train.schema, ctx.runner
    seed_everything(ctx.train_cfg.seed)
    supernet = build_embedding(schema, cfg, ctx.settings)
    assert isinstance(supernet, OptEmbedEmbedding)
    model = build_model(supernet, ctx.model_cfg)
    initial_tables = runner.initial_tables(model)  # what stage 3 restarts from
    initial_dense = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("embedding.")}
    stages: dict[str, dict] = {}

    net = runner.prepare(model)
    history = runner.fit(net, _epochs(ctx.train_cfg, cfg.supernet_epochs), data, [ThresholdCallback(supernet, cfg)])
    kept = supernet.kept_rows(runner.row_norms(net, model, supernet.prunable))
    counts = {t: supernet.cardinality[t] if ids is None else int(ids.numel()) for t, ids in kept.items()}
    stages["supernet"] = stage_report(net, data, history, supernet.memory().bytes, ctx.train_cfg, runner)
    stages["supernet"]["kept_rows"] = sum(counts.values())
    stages["supernet"]["rows"] = sum(supernet.cardinality.values())
    log.info("optembed supernet: %s", stages["supernet"])

    widths, search = search_widths(net, supernet, counts, data.valid, cfg, ctx.train_cfg, runner)
    for t, w in widths.items():  # a remap that costs more than the pruned rows save is not worth it
        if kept[t] is not None and supernet.cardinality[t] * w <= counts[t] * w + supernet.cardinality[t]:
            kept[t] = None
    supernet.search_widths = torch.tensor([widths[t] for t in supernet.table_names])
    stages["search"] = stage_report(net, data, None, search["cost"], ctx.train_cfg, runner)
    stages["search"].update(valid_auc=search["score"], candidates=search["candidates"], widths=widths)
    supernet.search_widths = None
    log.info("optembed search: %s", stages["search"])

    arch = OptEmbedArch(kept, widths, {"search": search})
    seed_everything(ctx.train_cfg.seed)
    compact = OptEmbedEmbedding(schema, cfg, ctx.settings, arch=arch)
    model = build_model(compact, ctx.model_cfg)
    loaded = model.load_state_dict(initial_dense, strict=False)
    if loaded.unexpected_keys or any(not k.startswith("embedding.") for k in loaded.missing_keys):
        raise RuntimeError(f"retraining could not restore the initial dense weights: {loaded}")
    net = runner.prepare(model, compact.compact_initial(initial_tables))
    history = runner.fit(net, _epochs(ctx.train_cfg, cfg.retrain_epochs), data)
    stages["retrain"] = stage_report(net, data, history, compact.serving_bytes(), ctx.train_cfg, runner)
    log.info("optembed retrain: %s", stages["retrain"])
    return StagedResult(model, history, stages, {"optembed": arch.to_state()}, net)


def search_widths(
    model: nn.Module,
    supernet: OptEmbedEmbedding,
    counts: dict[str, int],
    valid: CTRData,
    cfg: OptEmbed,
    train_cfg: TrainConfig,
    runner: StageRunner | None = None,
) -> tuple[dict[str, int], dict]:
    """Widths per table by evolutionary search on validation AUC, within the budget. `model`
    is the supernet's model as `runner` trains it; every candidate is scored through the
    runner (sharded: by every rank together, each taking the same decisions)."""
    runner = runner or StageRunner()
    tables = supernet.table_names
    floats = budget_floats(cfg.budget, cfg.budget_ratio, supernet.schema, cfg.dim)
    budget = None if floats is None else floats * BYTES_PER_FLOAT
    if cfg.search_rows and cfg.search_rows < len(valid):
        valid = valid.take(torch.arange(cfg.search_rows))
    labels = valid.labels.numpy()

    cards = supernet.cardinality

    def cost(c: tuple[int, ...]) -> int:  # per table the cheaper of pruned (+ remap) and whole
        return sum(min(serving_bytes(counts, cards, {t: w}), cards[t] * w * BYTES_PER_FLOAT) for t, w in zip(tables, c))

    def score(c: tuple[int, ...]) -> float:
        supernet.search_widths = torch.tensor(c)
        try:
            probs = runner.predict(model, valid, train_cfg.eval_batch_size)
        finally:
            supernet.search_widths = None
        auc = metrics.auc(labels, probs) if len(labels) else math.nan
        return -metrics.logloss(labels, probs) if math.isnan(auc) else auc

    evo = EvolutionConfig(cfg.generations, cfg.keep, cfg.mutations, cfg.crossovers, cfg.mutation_prob, cfg.seed)
    try:
        result = evolve(list(range(4, cfg.dim + 1, 4)), len(tables), cost, score, budget, evo)
    except BudgetError as e:
        given = f"budget={cfg.budget}" if cfg.budget else f"budget_ratio={cfg.budget_ratio} ({budget} bytes)"
        raise ValueError(
            f"OptEmbed: {given} cannot hold the rows the supernet kept ({sum(counts.values())} of "
            f"{sum(supernet.cardinality.values())}) at the smallest width 4 plus their remaps ({e}); raise the "
            f"budget, or prune more rows (a larger penalty or threshold_lr)"
        ) from None
    widths = dict(zip(tables, result.best))
    info = {"score": result.score, "cost": result.cost, "candidates": len(result.evaluated), "budget": budget}
    return widths, info


# -- dnis ---------------------------------------------------------------------------------------
def run_dnis(ctx: StageContext) -> StagedResult:
    cfg: Dnis = ctx.table_cfg
    data, runner = ctx.data, ctx.runner
    if runner.sharded:
        raise ValueError(f"table kind 'dnis' cannot train sharded: {UNSHARDED['dnis']}")
    seed_everything(ctx.train_cfg.seed)
    embedding = build_embedding(data.train.schema, cfg, ctx.settings)
    assert isinstance(embedding, DnisEmbedding)
    model = build_model(embedding, ctx.model_cfg)
    stages: dict[str, dict] = {}
    # bilevel: α learns from the first half of the validation rows, epochs are chosen on the
    # second, which α has not seen (choosing on α's own rows rewards overfitting them)
    alpha_rows, select_rows = data.valid.split([0.5, 0.5]) if cfg.mode == "bilevel" else (data.valid, data.valid)
    selecting = dataclasses.replace(data, valid=select_rows)
    selection = SelectionCallback(model, embedding, cfg, alpha_rows, ctx.train_cfg.batch_size)
    history = runner.fit(model, ctx.train_cfg, selecting, [selection])
    stages["search"] = stage_report(model, data, history, embedding.memory().bytes, ctx.train_cfg)
    log.info("dnis search: %s", stages["search"])

    pruned = embedding.prune()
    stages["prune"] = {**stage_report(model, data, None, embedding.serving_bytes(), ctx.train_cfg), **pruned}
    log.info("dnis prune: %s", stages["prune"])
    if cfg.finetune_epochs:
        embedding.selection.requires_grad_(False)  # fixed: only the weights of kept entries move
        # the pruned model stays unless an epoch beats it
        history = runner.fit(model, _epochs(ctx.train_cfg, cfg.finetune_epochs), data, baseline=True)
        stages["finetune"] = stage_report(model, data, history, embedding.serving_bytes(), ctx.train_cfg)
        log.info("dnis finetune: %s", stages["finetune"])
    return StagedResult(model, history, stages, None)


PROCEDURES: dict[str, Callable[[StageContext], StagedResult]] = {
    "optembed": run_optembed,
    "dnis": run_dnis,
}
# why a procedure cannot run on a sharding StageRunner (`recemb train --nproc` refuses these)
UNSHARDED: dict[str, str] = {
    "dnis": "its prune stage (DnisEmbedding.prune) reads every table whole from the store, which a sharded "
    "store does not hold; pruning sharded needs it to take per-group column statistics that the ranks sum from "
    "their shards. Train it without --nproc",
}


# -- the trained model of a run, for recemb.export ----------------------------------------------
def exports(model: CTRModel) -> bool:
    """Whether `recemb export` reads runs of this model's table kind (it has `export_tables`)."""
    return hasattr(model.embedding, "export_tables")


def save_trained(
    out_dir: Path,
    model: CTRModel,
    arch: dict | None,
    state: dict[str, Tensor] | None = None,
    tables: dict[str, Tensor] | None = None,
) -> Path | None:
    """model.pt: the weights (dense and store) and the architecture of a run whose table
    kind exports; None for other kinds. A sharded run gives its weights as `state` (the
    sharded model's state dict, read for the dense weights) and `tables` (gathered whole),
    and saves no optimizer state."""
    if not exports(model):
        return None
    embedding = model.embedding
    store_prefix = next(name + "." for name, m in model.named_modules() if m is embedding.store)
    state = model.state_dict() if state is None else state
    dense = {k: v.clone() for k, v in state.items() if not k.startswith(store_prefix)}
    store = embedding.store.store_state() if tables is None else {"weights": tables}
    path = Path(out_dir) / MODEL_FILE
    tmp = path.with_suffix(".tmp")
    torch.save({"kind": embedding.cfg.kind, "arch": arch, "dense": dense, "store": store}, tmp)
    tmp.replace(path)
    return path
