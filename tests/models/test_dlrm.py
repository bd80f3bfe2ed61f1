import pytest
import torch

from recemb import FeatureSpec, Full, Schema, StoreSettings, build_embedding
from recemb.data.synthetic import SyntheticConfig, generate
from recemb.models import DLRM, DLRMConfig, model_config
from recemb.models.dlrm import dot_interaction
from recemb.train import seed_everything


@pytest.fixture(scope="module", params=[4, 0], ids=["dense", "no_dense"])
def small(request):
    """The default schema (single, multi-hot and sequence features) with or without dense features."""
    return generate(SyntheticConfig(rows=128, cardinalities=(20, 300, 5000), n_dense=request.param, seed=3))


def make_model(schema, **settings):
    seed_everything(0)
    return DLRM(build_embedding(schema, Full(dim=8), StoreSettings(seed=0)), DLRMConfig(**settings))


def test_interaction_equals_explicit_pairwise_dots():
    v = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    # the reference's order: for i in range(n), for j in range(i)
    explicit = torch.stack([(v[:, i] * v[:, j]).sum(1) for i in range(5) for j in range(i)], dim=1)
    torch.testing.assert_close(dot_interaction(v), explicit)


def test_logit_is_top_mlp_over_bottom_output_and_dots():
    data = generate(SyntheticConfig(rows=16, cardinalities=(20, 300), multi_hot=0, sequences=0, seed=3))
    model = make_model(data.schema, bottom_hidden=(8,), top_hidden=(8,))
    batch = data.batch(torch.arange(8))
    z = torch.relu(model.bottom[2](torch.relu(model.bottom[0](batch.dense))))  # 4 -> 8 -> D, ReLU after each
    c1, c2 = model.fields(batch.sparse).unbind(1)
    dots = torch.stack([(c1 * z).sum(1), (c2 * z).sum(1), (c2 * c1).sum(1)], dim=1)
    torch.testing.assert_close(model(batch.sparse, batch.dense), model.top(torch.cat([z, dots], dim=1)).squeeze(1))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match=r"DLRMConfig.top_hidden widths must be >= 1, got \(512, 0\)"):
        DLRMConfig(top_hidden=(512, 0))
    with pytest.raises(ValueError, match="no setting 'bottom'"):
        model_config("dlrm", {"bottom": "64"})
    lonely = Schema((FeatureSpec("C1", 10),))
    with pytest.raises(ValueError, match="needs at least 2"):
        make_model(lonely)
