import pytest
import torch
import torch.nn.functional as F

from recemb import Full, StoreSettings, build_embedding
from recemb.data.synthetic import SyntheticConfig, generate
from recemb.models import DCNv2, DCNv2Config, model_config
from recemb.models.dcnv2 import CrossLayer
from recemb.train import TrainConfig, Trainer, evaluate, seed_everything


@pytest.fixture(scope="module", params=[4, 0], ids=["dense", "no_dense"])
def small(request):
    """The default schema (single, multi-hot and sequence features) with or without dense features."""
    return generate(SyntheticConfig(rows=128, cardinalities=(20, 300, 5000), n_dense=request.param, seed=3))


def make_model(schema, **settings):
    seed_everything(0)
    return DCNv2(build_embedding(schema, Full(dim=8), StoreSettings(seed=0)), DCNv2Config(**settings))


@pytest.mark.parametrize(
    "settings",
    [{}, {"structure": "parallel", "rank": 4}, {"dnn_hidden": ()}],
    ids=["stacked", "parallel_low_rank", "cross_only"],
)
def test_logits_gradients_and_fused_update(small, settings):
    assert {f.kind for f in small.schema.sparse} == {"single", "multi_hot", "sequence"}
    model = make_model(small.schema, **settings)
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


def test_cross_layer_equals_the_formula():
    torch.manual_seed(0)
    x0, x = torch.randn(3, 6), torch.randn(3, 6)
    full = CrossLayer(6)
    w, b = full.weight.weight, full.weight.bias  # W [6, 6], b [6]
    torch.testing.assert_close(full(x0, x), x0 * (x @ w.T + b) + x)
    low = CrossLayer(6, rank=2)
    v, u, b = low.weight[0].weight, low.weight[1].weight, low.weight[1].bias  # V^T [2, 6], U [6, 2]
    torch.testing.assert_close(low(x0, x), x0 * (x @ (u @ v).T + b) + x)


@pytest.mark.parametrize("structure", ["stacked", "parallel"])
def test_structures_wire_cross_and_dnn_as_the_paper(small, structure):
    model = make_model(small.schema, structure=structure, cross_layers=2, dnn_hidden=(16,)).eval()
    batch = small.batch(torch.arange(8))
    x0 = torch.cat([model.fields(batch.sparse).flatten(1), batch.dense], dim=1)
    cross = model.cross[1](x0, model.cross[0](x0, x0))
    top = model.dnn(cross) if structure == "stacked" else torch.cat([cross, model.dnn(x0)], dim=1)
    torch.testing.assert_close(model(batch.sparse, batch.dense), model.out(top).squeeze(1))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="DCNv2Config.structure must be one of .* got 'serial'"):
        DCNv2Config(structure="serial")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="DCNv2Config.rank must be >= 1 or None"):
        model_config("dcnv2", {"rank": "0"})
    with pytest.raises(ValueError, match="DCNv2Config.cross_layers must be >= 1, got 0"):
        DCNv2Config(cross_layers=0)
