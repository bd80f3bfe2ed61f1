import math

import pytest
import torch

from recemb import Full, StoreSettings, build_embedding
from recemb.data.synthetic import SyntheticConfig, generate
from recemb.models import build_model, model_config
from recemb.train import CHECKPOINT, TrainConfig, Trainer, evaluate, seed_everything


@pytest.fixture(scope="module")
def splits():
    cfg = SyntheticConfig(rows=6000, cardinalities=(10, 200, 3000), multi_hot=0, sequences=0, seed=1)
    return generate(cfg).split([0.7, 0.1, 0.2])


def make_trainer(splits, out_dir=None, **train):
    seed_everything(0)
    embedding = build_embedding(splits[0].schema, Full(dim=8), StoreSettings(seed=0))
    model = build_model(embedding, model_config("autoint", {"layers": 2}))
    return Trainer(model, TrainConfig(batch_size=256, **train), out_dir)


def test_training_learns_the_planted_signal(splits):
    train, valid, test = splits
    trainer = make_trainer(splits, epochs=2)
    before = evaluate(trainer.model, test)["auc"]
    history = trainer.fit(train, valid)
    after = evaluate(trainer.model, test)
    assert after["auc"] > 0.65 and after["auc"] > before + 0.1
    assert 0 < after["logloss"] < 0.69
    assert history.samples_per_s > 0 and history.best_epoch >= 1


def test_same_seed_same_result(splits):
    train, valid, test = splits
    a, b = make_trainer(splits), make_trainer(splits)
    a.fit(train, valid)
    b.fit(train, valid)
    assert evaluate(a.model, test)["auc"] == evaluate(b.model, test)["auc"]


def test_resume_from_checkpoint_reaches_the_uninterrupted_weights(splits, tmp_path):
    train, valid, _ = splits
    straight = make_trainer(splits, epochs=2, patience=5)
    straight.fit(train, valid)
    first = make_trainer(splits, out_dir=tmp_path, epochs=1, patience=5)
    first.fit(train, valid)
    assert (tmp_path / CHECKPOINT).exists() and not (tmp_path / (CHECKPOINT + ".tmp")).exists()
    resumed = make_trainer(splits, out_dir=tmp_path, epochs=2, patience=5)
    assert resumed.try_resume()
    resumed.fit(train, valid)
    assert len(resumed.history.epochs) == 2
    expected, got = straight.model.embedding.store.table_weights(), resumed.model.embedding.store.table_weights()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])
    for (name, p), q in zip(straight.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(q, p, msg=name)


def test_early_stopping_keeps_the_best_validation_epoch(splits):
    train, valid, test = splits
    trainer = make_trainer(splits, epochs=8, patience=1, lr=0.02)
    history = trainer.fit(train, valid)
    aucs = [e["valid_auc"] for e in history.epochs]
    assert len(aucs) < 8, "an overfitting run should stop early"
    assert history.best_epoch == 1 + max(range(len(aucs)), key=aucs.__getitem__)
    valid_now = evaluate(trainer.model, valid)["auc"]
    assert math.isclose(valid_now, max(aucs), rel_tol=1e-6), "best weights were not restored"


def test_bad_train_settings_are_refused(splits):
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    trainer = make_trainer(splits)
    with pytest.raises(ValueError, match="empty"):
        trainer.fit(splits[0].take(torch.arange(0)))
