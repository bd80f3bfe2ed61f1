import pytest
import torch

from recemb import Full, StoreSettings, build_embedding
from recemb.data.synthetic import SyntheticConfig, generate
from recemb.models import WDL, WDLConfig, model_config
from recemb.train import seed_everything


@pytest.fixture(scope="module", params=[4, 0], ids=["dense", "no_dense"])
def small(request):
    """The default schema (single, multi-hot and sequence features) with or without dense features."""
    return generate(SyntheticConfig(rows=128, cardinalities=(20, 300, 5000), n_dense=request.param, seed=3))


def make_model(schema, **settings):
    seed_everything(0)
    return WDL(build_embedding(schema, Full(dim=8), StoreSettings(seed=0)), WDLConfig(**settings))


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
