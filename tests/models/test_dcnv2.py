import pytest
import torch

from recemb import Full, StoreSettings, build_embedding
from recemb.data.synthetic import SyntheticConfig, generate
from recemb.models import DCNv2, DCNv2Config, model_config
from recemb.models.dcnv2 import CrossLayer
from recemb.train import seed_everything


@pytest.fixture(scope="module", params=[4, 0], ids=["dense", "no_dense"])
def small(request):
    """The default schema (single, multi-hot and sequence features) with or without dense features."""
    return generate(SyntheticConfig(rows=128, cardinalities=(20, 300, 5000), n_dense=request.param, seed=3))


def make_model(schema, **settings):
    seed_everything(0)
    return DCNv2(build_embedding(schema, Full(dim=8), StoreSettings(seed=0)), DCNv2Config(**settings))


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
