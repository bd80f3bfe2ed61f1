import pytest
import torch

from recemb import Full, StoreSettings, build_embedding
from recemb.data.synthetic import SyntheticConfig, generate
from recemb.models import AutoInt, AutoIntConfig, build_model, model_config
from recemb.models.autoint import InteractingLayer


@pytest.fixture(scope="module")
def data():
    return generate(SyntheticConfig(rows=512, cardinalities=(20, 300, 5000), seed=3))


def make_model(data, name="autoint", backend="tbe", **settings):
    embedding = build_embedding(data.schema, Full(dim=8), StoreSettings(backend=backend))
    return build_model(embedding, model_config(name, settings))


def test_autoint_plus_adds_a_dnn_and_autoint_has_none(data):
    assert make_model(data, "autoint").dnn is None
    plus = make_model(data, "autoint_plus")
    assert plus.dnn is not None
    assert plus.cfg.dnn_hidden == (256, 256)


def test_interacting_layer_matches_explicit_attention():
    torch.manual_seed(0)
    layer = InteractingLayer(in_dim=8, heads=2, attention_dim=4, residual=True)
    x = torch.randn(3, 5, 8)
    q, k, v = layer.qkv(x).view(3, 5, 3, 2, 4).unbind(2)  # each [B, F, H, d']
    scores = torch.einsum("bfhd,bghd->bhfg", q, k) / 2.0  # 1/sqrt(d') with d' = 4
    heads = torch.einsum("bhfg,bghd->bfhd", scores.softmax(-1), v).reshape(3, 5, 8)
    expected = torch.relu(heads + layer.res(x))
    torch.testing.assert_close(layer(x), expected)


def test_tbe_and_reference_stores_give_the_same_model_outputs(data):
    torch.manual_seed(0)
    a = make_model(data, backend="tbe")
    b = make_model(data, backend="reference")
    b.load_state_dict({k: v for k, v in a.state_dict().items() if not k.startswith("embedding.store")}, strict=False)
    batch = data.batch(torch.arange(32))
    torch.testing.assert_close(a(batch.sparse, batch.dense), b(batch.sparse, batch.dense))


def test_bad_dense_input_is_refused(data):
    model = make_model(data)
    batch = data.batch(torch.arange(4))
    with pytest.raises(ValueError, match="NaN"):
        model(batch.sparse, torch.full_like(batch.dense, float("nan")))
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        model(batch.sparse, batch.dense[:, :2])


def test_bad_model_settings_are_refused():
    with pytest.raises(ValueError, match="heads"):
        AutoIntConfig(heads=0)
    with pytest.raises(ValueError, match="did you mean 'autoint'"):
        model_config("autoin")
    with pytest.raises(ValueError, match="no setting 'head'"):
        model_config("autoint", {"head": 2})


def test_autoint_sees_sequence_features_as_fields(data):
    model = make_model(data)
    assert isinstance(model, AutoInt)
    batch = data.batch(torch.arange(16))
    assert model.fields(batch.sparse).shape == (16, len(data.schema.sparse), 8)


def test_dense_features_can_go_to_a_linear_term_instead_of_fields(data):
    """dense_as_fields=False (DeepCTR's way): attention over the sparse fields only, the dense
    features in a linear term of the logit, which still moves with them."""
    as_fields = make_model(data, "autoint", layers=1)
    linear = make_model(data, "autoint", layers=1, dense_as_fields=False)
    n_sparse, n_dense = len(data.schema.sparse), len(data.schema.dense)
    width = linear.cfg.heads * linear.cfg.attention_dim
    assert as_fields.attention_out.in_features == (n_sparse + n_dense) * width
    assert linear.attention_out.in_features == n_sparse * width
    assert linear.dense_fields is None and linear.dense_linear.in_features == n_dense
    batch = data.batch(torch.arange(16))
    before = linear(batch.sparse, batch.dense)
    after = linear(batch.sparse, batch.dense + 1.0)
    assert not torch.allclose(before, after)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(after, batch.labels)
    loss.backward()
    assert linear.dense_linear.weight.grad is not None
