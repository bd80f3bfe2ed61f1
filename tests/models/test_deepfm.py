import pytest
import torch

from recemb import Full, StoreSettings, build_embedding
from recemb.data.synthetic import SyntheticConfig, generate
from recemb.models import DeepFM, DeepFMConfig, model_config
from recemb.models.layers import fm_second_order
from recemb.train import seed_everything


@pytest.fixture(scope="module", params=[4, 0], ids=["dense", "no_dense"])
def small(request):
    """The default schema (single, multi-hot and sequence features) with or without dense features."""
    return generate(SyntheticConfig(rows=128, cardinalities=(20, 300, 5000), n_dense=request.param, seed=3))


def make_model(schema, **settings):
    seed_everything(0)
    return DeepFM(build_embedding(schema, Full(dim=8), StoreSettings(seed=0)), DeepFMConfig(**settings))


def test_fm_second_order_equals_the_sum_over_pairs():
    x = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    explicit = sum((x[:, i] * x[:, j]).sum(1) for i in range(5) for j in range(i + 1, 5))
    torch.testing.assert_close(fm_second_order(x), explicit)


def test_logit_is_first_order_plus_fm_plus_dnn(small):
    model = make_model(small.schema, dnn_hidden=(16,)).eval()
    batch = small.batch(torch.arange(8))
    x = model.fields(batch.sparse)  # [B, F, D]
    first = torch.einsum("bfd,fd->b", x, model.first_order.field_vectors) + model.first_order.bias
    if model.n_dense:
        first = first + batch.dense @ model.first_order.dense.weight[0] + model.first_order.dense.bias[0]
        x = torch.cat([x, batch.dense.unsqueeze(2) * model.dense_fields.vectors], dim=1)
    expected = first + fm_second_order(x) + model.dnn(x.flatten(1)).squeeze(1)
    torch.testing.assert_close(model(batch.sparse, batch.dense), expected)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match=r"DeepFMConfig.dropout must be in \[0, 1\), got 1.0"):
        DeepFMConfig(dropout=1.0)
    with pytest.raises(ValueError, match="dnn_hidden widths must be >= 1"):
        model_config("deepfm", {"dnn_hidden": "400;0"})
