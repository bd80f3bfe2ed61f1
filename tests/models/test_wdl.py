import pytest
import torch
import torch.nn.functional as F

from recemb import Full, StoreSettings, build_embedding
from recemb.data.synthetic import SyntheticConfig, generate
from recemb.models import WDL, WDLConfig, model_config
from recemb.train import TrainConfig, Trainer, evaluate, seed_everything


@pytest.fixture(scope="module", params=[4, 0], ids=["dense", "no_dense"])
def small(request):
    """The default schema (single, multi-hot and sequence features) with or without dense features."""
    return generate(SyntheticConfig(rows=128, cardinalities=(20, 300, 5000), n_dense=request.param, seed=3))


def make_model(schema, **settings):
    seed_everything(0)
    return WDL(build_embedding(schema, Full(dim=8), StoreSettings(seed=0)), WDLConfig(**settings))


def test_logits_gradients_and_fused_update(small):
    assert {f.kind for f in small.schema.sparse} == {"single", "multi_hot", "sequence"}
    model = make_model(small.schema)
    batch = small.batch(torch.arange(64))
    logits = model(batch.sparse, batch.dense)
    assert logits.shape == (64,) and torch.isfinite(logits).all()
    before = model.embedding.store.table_weights()
    F.binary_cross_entropy_with_logits(logits, batch.labels).backward()
    for name, p in model.named_parameters():
        if id(p) in {id(q) for q in model.dense_parameters()}:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    after = model.embedding.store.table_weights()
    assert any(not torch.equal(before[k], after[k]) for k in before), "fused optimizer did not move embeddings"


def test_quick_fit_learns_the_planted_signal():
    data = generate(SyntheticConfig(rows=5000, cardinalities=(10, 100, 1000), seed=2))
    train, test = data.split([0.8, 0.2])
    model = make_model(data.schema)
    Trainer(model, TrainConfig(epochs=2, batch_size=256)).fit(train)
    assert evaluate(model, test)["auc"] > 0.6


def test_logit_is_wide_plus_deep(small):
    model = make_model(small.schema, dnn_hidden=(16,))
    batch = small.batch(torch.arange(8))
    x = model.fields(batch.sparse)  # [B, F, D]
    wide = (x * model.wide.field_vectors).sum((1, 2)) + model.wide.bias  # sum_f <u_f, e_f> + b
    if model.n_dense:
        wide = wide + batch.dense @ model.wide.dense.weight[0] + model.wide.dense.bias[0]
    torch.testing.assert_close(model.wide(x, batch.dense), wide)
    deep = model.deep(torch.cat([x.flatten(1), batch.dense], dim=1)).squeeze(1)
    torch.testing.assert_close(model(batch.sparse, batch.dense), wide + deep)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match=r"WDLConfig.dropout must be in \[0, 1\), got -0.1"):
        WDLConfig(dropout=-0.1)
    with pytest.raises(ValueError, match="did you mean 'dnn_hidden'"):
        model_config("wdl", {"dnn_hiden": "64"})
