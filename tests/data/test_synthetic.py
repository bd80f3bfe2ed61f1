"""The synthetic generator: determinism, Zipf ids at any cardinality, a planted model whose
Bayes AUC is the documented one, and data that fits its schema."""

from __future__ import annotations

import tracemalloc
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import OneHotEncoder

from recemb.data.synthetic import (
    CRITEO_CARDINALITIES,
    DEFAULT_BAYES_AUC,
    SyntheticConfig,
    bayes_auc,
    criteo_like_config,
    generate,
    generate_with_truth,
    schema_for,
)

SMALL = SyntheticConfig(rows=3_000)


def _same(a, b) -> bool:
    return (
        torch.equal(a.single, b.single)
        and torch.equal(a.dense, b.dense)
        and torch.equal(a.labels, b.labels)
        and a.jagged.keys() == b.jagged.keys()
        and all(torch.equal(a.jagged[k].values, b.jagged[k].values) for k in a.jagged)
        and all(torch.equal(a.jagged[k].offsets, b.jagged[k].offsets) for k in a.jagged)
    )


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b = generate(SMALL), generate(SMALL)
    assert _same(a, b)
    c = generate(replace(SMALL, seed=1))
    assert not torch.equal(a.single, c.single)
    assert not torch.equal(a.labels, c.labels)
    assert not torch.equal(a.jagged["S1"].values, c.jagged["S1"].values)


def test_data_matches_schema() -> None:
    cfg = SMALL
    data = generate(cfg)
    schema = schema_for(cfg)
    assert data.schema == schema
    assert schema.names == ("C1", "C2", "C3", "C4", "C5", "C6", "M1", "S1")
    assert schema.dense == ("I1", "I2", "I3", "I4")
    assert data.single.shape == (cfg.rows, len(cfg.cardinalities)) and data.single.dtype == torch.int64
    assert data.dense.shape == (cfg.rows, cfg.n_dense) and data.dense.dtype == torch.float32
    assert set(data.labels.unique().tolist()) == {0.0, 1.0}
    for j, card in enumerate(cfg.cardinalities):
        assert 0 <= int(data.single[:, j].min()) and int(data.single[:, j].max()) < card
    # the history shares the table of the target item (the last single feature)
    s1 = schema.feature("S1")
    assert s1.kind == "sequence" and s1.max_len == cfg.sequence_max_len and s1.table == "C6"
    assert schema.tables()["C6"] == [schema.feature("C6"), s1]
    assert schema.feature("M1").pooling == cfg.multi_hot_pooling


def test_bag_and_history_lengths_within_limits() -> None:
    cfg = replace(SMALL, multi_hot=2, multi_hot_max=4, sequences=2, sequence_max_len=7)
    data = generate(cfg)
    for name, top in [("M1", 4), ("M2", 4), ("S1", 7), ("S2", 7)]:
        jag = data.jagged[name]
        lengths = jag.lengths
        assert int(lengths.min()) == 0 and int(lengths.max()) == top  # the whole range occurs
        assert jag.values.numel() == int(lengths.sum())
        card = data.schema.feature(name).cardinality
        assert 0 <= int(jag.values.min()) and int(jag.values.max()) < card


def test_ids_are_zipf_and_scrambled() -> None:
    n, s = 10_000, 1.1
    cfg = SyntheticConfig(rows=50_000, cardinalities=(n,), multi_hot=0, sequences=0, zipf=s, interactions=0)
    ids = generate(cfg).single[:, 0].numpy()
    freq = np.sort(np.bincount(ids, minlength=n))[::-1] / ids.size
    expected = np.arange(1, n + 1) ** -s / np.sum(np.arange(1, n + 1) ** -s)
    # each of the top ranks at its Zipf probability (binomial sd <= 0.0015 here)
    np.testing.assert_allclose(freq[:5], expected[:5], atol=0.006)
    assert freq[:10].sum() > 0.3  # ten ids of 10,000 take a third of the rows
    assert (freq > 0).sum() < n  # and many ids never occur
    # the frequent ids are spread over the id space, not the small ones
    top = np.argsort(np.bincount(ids, minlength=n))[::-1][:10]
    assert top.max() > n // 10


def test_cardinality_1e8_without_a_table_of_that_size() -> None:
    card = 10**8
    cfg = SyntheticConfig(rows=20_000, cardinalities=(card, 1000), multi_hot=0, sequences=1, interactions=1)
    tracemalloc.start()
    try:
        data = generate(cfg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20  # a table of 1e8 floats alone would be 800 MB
    ids = data.single[:, 0]
    assert int(ids.min()) >= 0 and int(ids.max()) < card
    assert int(ids.max()) > card // 2  # spread over the whole range
    assert int(data.jagged["S1"].values.max()) < card


def test_default_bayes_auc_is_the_documented_one() -> None:
    data, prob = generate_with_truth(SyntheticConfig())
    assert prob.shape == data.labels.shape and prob.dtype == torch.float64
    assert bayes_auc(data.labels, prob) == pytest.approx(DEFAULT_BAYES_AUC, abs=0.001)
    assert 0.18 < float(data.labels.mean()) < 0.22  # base_ctr 0.2
    assert float(prob.mean()) == pytest.approx(0.2, abs=0.02)


@pytest.mark.parametrize("seed", [1, 2])
def test_other_seeds_and_criteo_like_give_a_realistic_ceiling(seed: int) -> None:
    for cfg in (SyntheticConfig(seed=seed), criteo_like_config(20_000, seed=seed)):
        data, prob = generate_with_truth(cfg)
        assert 0.78 < bayes_auc(data.labels, prob) < 0.87
        assert 0.17 < float(data.labels.mean()) < 0.23


def test_no_signal_gives_base_rate_and_chance_auc() -> None:
    data, prob = generate_with_truth(replace(SyntheticConfig(), signal_std=0.0))
    assert torch.allclose(prob, torch.full_like(prob, 0.2))
    assert float(data.labels.mean()) == pytest.approx(0.2, abs=0.01)


def test_labels_are_learnable_from_the_features() -> None:
    """A one-hot logistic regression on the data alone (no truth) beats chance on held-out
    rows, and stays below the Bayes ceiling."""
    data, prob = generate_with_truth(SyntheticConfig())
    x = np.concatenate([data.single[:, :4].numpy(), data.dense.numpy().round(1)], axis=1)
    y = data.labels.numpy()
    enc = OneHotEncoder(handle_unknown="ignore").fit(x[:15_000])
    model = LogisticRegression(C=0.5, max_iter=500).fit(enc.transform(x[:15_000]), y[:15_000])
    auc = roc_auc_score(y[15_000:], model.predict_proba(enc.transform(x[15_000:]))[:, 1])
    ceiling = bayes_auc(data.labels[15_000:], prob[15_000:])
    assert 0.6 < auc < ceiling


def test_shared_table_shares_popular_ids() -> None:
    data = generate(SyntheticConfig())
    target = np.bincount(data.single[:, -1].numpy()).argmax()
    history = np.bincount(data.jagged["S1"].values.numpy()).argmax()
    assert target == history


def test_criteo_like_config_caps_the_cardinalities() -> None:
    cfg = criteo_like_config(1_000, cap=100_000)
    assert cfg.cardinalities == tuple(min(c, 100_000) for c in CRITEO_CARDINALITIES)
    assert len(cfg.cardinalities) == 26 and cfg.n_dense == 13
    data = generate(cfg)
    assert data.single.shape == (1_000, 26) and data.dense.shape == (1_000, 13)
    assert not data.jagged
    assert max(cfg.cardinalities) == 100_000 and min(cfg.cardinalities) == 3
    assert all(f.kind == "single" for f in data.schema.sparse)


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("rows", 0, "rows must be >= 1"),
        ("zipf", 0.0, "zipf must be > 0"),
        ("cardinalities", (10, 0), "cardinalities[1] must be in [1, 2**31]"),
        ("cardinalities", (2**40,), "cardinalities[0] must be in [1, 2**31]"),
        ("base_ctr", 1.0, "base_ctr must be in (0, 1)"),
        ("sequence_target", 6, "sequence_target must index"),
        ("interactions", -1, "interactions must be >= 0"),
        ("latent_dim", 0, "latent_dim must be >= 1"),
        ("multi_hot_pooling", "max", "multi_hot_pooling must be 'sum' or 'mean'"),
    ],
)
def test_config_errors_name_field_value_and_rule(field: str, value: object, words: str) -> None:
    with pytest.raises(ValueError) as err:
        SyntheticConfig(**{field: value})
    assert words in str(err.value) and str(value).strip("()").split(",")[-1].strip() in str(err.value)


@pytest.mark.parametrize(
    "cfg",
    [
        SyntheticConfig(rows=500, cardinalities=(7,)),  # one single feature: no pair to plant
        SyntheticConfig(rows=500, cardinalities=(), multi_hot=2, sequence_target=None, n_dense=0),  # no single
        SyntheticConfig(rows=500, cardinalities=(1, 1), sequences=0, multi_hot=0),  # constant ids
    ],
)
def test_small_configs_work_with_the_other_defaults(cfg: SyntheticConfig) -> None:
    data, prob = generate_with_truth(cfg)
    assert len(data) == 500 and torch.isfinite(prob).all()
    assert data.schema == schema_for(cfg)
