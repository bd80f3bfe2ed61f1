"""The staged training of optembed and dnis through run_training: stages reported, the
thresholds and α trained by their own optimizers, budgets enforced, bad requests refused."""

from __future__ import annotations

import pytest
import torch

from recemb.data import load_dataset
from recemb.models import build_model, model_config
from recemb.pruning.procedures import (
    MODEL_FILE,
    SelectionCallback,
    StageContext,
    StageRunner,
    ThresholdCallback,
    run_dnis,
)
from recemb.run import run_training
from recemb.storage import StoreSettings
from recemb.tables import Dnis, OptEmbed, build_embedding
from recemb.train import TrainConfig, Trainer

DATA = "synthetic:rows=1200,cardinalities=20;60;300,multi_hot=0,sequences=0,seed=3"
MODEL = {"name": "autoint", "layers": 1, "attention_dim": 8}
TRAIN = {"epochs": 1, "batch_size": 256}


@pytest.fixture(scope="module")
def splits():
    return load_dataset(DATA)


def test_dnis_runs_search_prune_finetune(splits, tmp_path):
    table = {"kind": "dnis", "dim": 8, "groups": 3, "budget_ratio": 0.3}
    result = run_training({"data": DATA, "table": table, "model": MODEL, "train": TRAIN}, out_dir=tmp_path, data=splits)
    stages = result.metrics["stages"]
    assert list(stages) == ["search", "prune", "finetune"]
    full = (20 + 60 + 300) * 8 * 4
    assert stages["search"]["bytes"] == full + 9 * 8 * 4  # the full tables and alpha (3 groups per table)
    assert stages["prune"]["bytes"] == stages["finetune"]["bytes"] <= 0.3 * full
    assert (tmp_path / MODEL_FILE).exists()
    saved = torch.load(tmp_path / MODEL_FILE, weights_only=False)
    alpha = saved["dense"]["embedding.selection"]
    assert alpha.min() >= 0 and alpha.max() <= 1


def test_callbacks_own_their_parameters(splits):
    settings = StoreSettings("reference")
    supernet = build_embedding(splits.train.schema, OptEmbed(dim=8, threshold_lr=0.05, penalty=1.0), settings)
    model = build_model(supernet, model_config("autoint", {"layers": 1}))
    callback = ThresholdCallback(supernet, supernet.cfg)
    trainer = Trainer(model, TrainConfig(epochs=1, batch_size=256), callbacks=[callback])
    in_adam = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert id(supernet.thresholds) not in in_adam
    before = supernet.thresholds.detach().clone()
    trainer.fit(splits.train, splits.valid)
    assert torch.all(supernet.thresholds > before), "a strong penalty pushes every threshold up"

    dnis = build_embedding(splits.train.schema, Dnis(dim=8), settings)
    model = build_model(dnis, model_config("autoint", {"layers": 1}))
    callback = SelectionCallback(model, dnis, dnis.cfg, splits.valid, 256)
    trainer = Trainer(model, TrainConfig(epochs=1, batch_size=256), callbacks=[callback])
    assert id(dnis.selection) not in {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    trainer.fit(splits.train, splits.valid)
    assert dnis.selection.min() >= 0 and dnis.selection.max() <= 1 and not torch.all(dnis.selection == 1)


def test_optembed_budget_below_the_kept_rows_is_refused(splits):
    table = {"kind": "optembed", "dim": 8, "generations": 1, "budget": 1000}
    with pytest.raises(
        ValueError, match=r"OptEmbed: budget=1000 cannot hold the rows the supernet kept .* at the smallest width 4"
    ):
        run_training({"data": DATA, "table": table, "model": MODEL, "train": TRAIN}, data=splits)


def test_resume_is_refused_for_staged_kinds(splits, tmp_path):
    with pytest.raises(ValueError, match="resume is not supported for table kind 'dnis'"):
        run_training(
            {"data": DATA, "table": {"kind": "dnis"}, "train": TRAIN}, out_dir=tmp_path, resume=True, data=splits
        )


def test_joint_mode_steps_alpha_on_the_training_loss(splits):
    dnis = build_embedding(splits.train.schema, Dnis(dim=8, mode="joint", selection_lr=0.5), StoreSettings("reference"))
    model = build_model(dnis, model_config("autoint", {"layers": 1}))
    callback = SelectionCallback(model, dnis, dnis.cfg, splits.valid, 256)
    assert callback._valid is None, "joint mode reads no validation batches"
    batch = next(splits.train.batches(256))
    torch.nn.functional.binary_cross_entropy_with_logits(model(batch.sparse, batch.dense), batch.labels).backward()
    callback.after_step()
    assert not torch.all(dnis.selection == 1) and dnis.selection.min() >= 0 and dnis.selection.max() <= 1
    assert dnis.selection.grad is None


def test_dnis_refuses_a_sharding_runner(splits):
    """DNIS's prune stage reads whole tables, which a sharded store does not hold: a sharding
    runner is refused up front, naming the kind and the stage, not partway through."""

    class Sharding(StageRunner):
        sharded = True

    ctx = StageContext(
        splits,
        Dnis(dim=8),
        model_config("autoint", {"layers": 1}),
        TrainConfig(),
        StoreSettings("reference"),
        Sharding(),
    )
    with pytest.raises(ValueError, match=r"table kind 'dnis' cannot train sharded: its prune stage \(DnisEmbedding"):
        run_dnis(ctx)
