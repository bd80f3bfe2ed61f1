"""What every registered CTR model does, whatever its table kind: one finite logit per
sample from single, multi-hot and sequence features (with or without dense ones), a
gradient for every dense parameter, embeddings moved by the store's fused optimizer and
kept out of the dense parameters, and a quick fit that learns the synthetic data's planted
signal. Each model's own formula is tested in its own file."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recemb import StoreSettings, build_embedding
from recemb.data.synthetic import SyntheticConfig, generate
from recemb.models import MODELS, build_model, model_config
from recemb.tables import parse_table
from recemb.train import TrainConfig, Trainer, evaluate, seed_everything

# each model once, plus the settings that wire it differently
VARIANTS = [(name, {}) for name in sorted(MODELS)] + [
    ("dcnv2", {"structure": "parallel", "rank": 4}),
    ("dcnv2", {"dnn_hidden": ()}),
]
# a kind of each family: the model never knows which it reads
KINDS = ["full:dim=8", "hashed:dim=8,buckets=64", "unified:dim=8,budget_ratio=0.2,chunks=2", "qr:dim=8,collisions=4"]


@pytest.fixture(scope="module", params=[4, 0], ids=["dense", "no_dense"])
def small(request):
    """The default schema (single, multi-hot and sequence features) with or without dense features."""
    return generate(SyntheticConfig(rows=128, cardinalities=(20, 300, 5000), n_dense=request.param, seed=3))


def make_model(schema, name: str, settings: dict, table: str = "full:dim=8"):
    seed_everything(0)
    embedding = build_embedding(schema, parse_table(table), StoreSettings(seed=0))
    return build_model(embedding, model_config(name, settings))


def variant_id(variant) -> str:
    name, settings = variant
    return name + "".join(f"-{k}={v}" for k, v in settings.items())


@pytest.mark.parametrize("table", KINDS)
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_logits_gradients_and_fused_update(small, variant, table):
    assert {f.kind for f in small.schema.sparse} == {"single", "multi_hot", "sequence"}
    model = make_model(small.schema, *variant, table)
    fused = {id(p) for p in model.embedding.fused_parameters()}
    dense = {id(p) for p in model.dense_parameters()}
    assert fused and not fused & dense, "fused weights must stay out of the torch optimizer"
    batch = small.batch(torch.arange(64))
    logits = model(batch.sparse, batch.dense)
    assert logits.shape == (64,) and torch.isfinite(logits).all()
    before = model.embedding.store.table_weights()
    F.binary_cross_entropy_with_logits(logits, batch.labels).backward()
    for name, p in model.named_parameters():
        if id(p) in dense:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    after = model.embedding.store.table_weights()
    assert any(not torch.equal(before[k], after[k]) for k in before), "fused optimizer did not move embeddings"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_quick_fit_learns_the_planted_signal(name):
    data = generate(SyntheticConfig(rows=5000, cardinalities=(10, 100, 1000), seed=2))
    train, test = data.split([0.8, 0.2])
    model = make_model(data.schema, name, {})
    Trainer(model, TrainConfig(epochs=2, batch_size=256)).fit(train)
    assert evaluate(model, test)["auc"] > 0.6
