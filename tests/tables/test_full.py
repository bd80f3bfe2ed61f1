"""Semantics of the full table: id i reads row i of its feature's table; features naming
one table share its rows; out-of-range ids are refused or read a reserved OOV row."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from recemb.data.batch import kjt_from_ids
from recemb.features import FeatureSpec, Schema
from recemb.storage import STORES, EmbeddingOptimizer, LookupSpec, StoreSettings
from recemb.tables import Full, FullEmbedding, build_embedding

SCHEMA = Schema(
    (
        FeatureSpec("user", 6),
        FeatureSpec("item", 8),
        FeatureSpec("tags", 5, "multi_hot", pooling="mean"),
        FeatureSpec("tags_sum", 5, "multi_hot", table="tags"),
        FeatureSpec("hist", 8, "sequence", max_len=3, table="item"),
    )
)
BAGS = {
    "user": [[0], [5], [2]],
    "item": [[3], [7], [0]],
    "tags": [[1, 4, 4], [], [0]],
    "tags_sum": [[2, 2], [3], []],
    "hist": [[3, 1, 7], [], [6]],
}
DIM = 8


def build(backend: str = "tbe", oov: str = "error", opt: str = "sgd", lr: float = 1.0) -> FullEmbedding:
    return build_embedding(SCHEMA, Full(dim=DIM, oov=oov), StoreSettings(backend, EmbeddingOptimizer(opt, lr=lr)))


def pooled_of(emb, name: str) -> torch.Tensor:
    return emb.pooled[:, [f.name for f in SCHEMA.pooled].index(name)]


def test_layout_has_one_table_per_logical_table():
    module = build("reference")
    layout = module.store.layout
    assert [(t.name, t.rows, t.dim) for t in layout.tables] == [("user", 6, DIM), ("item", 8, DIM), ("tags", 5, DIM)]
    assert layout.lookups == (
        LookupSpec("user", "user", "sum"),
        LookupSpec("item", "item", "sum"),
        LookupSpec("tags", "tags", "mean"),
        LookupSpec("tags_sum", "tags", "sum"),
        LookupSpec("hist", "item", "none", 3),
    )
    oov = build("reference", oov="row").store.layout
    assert [t.rows for t in oov.tables] == [7, 9, 6]  # one extra row per table, not per feature
    assert module.memory().params == (6 + 8 + 5) * DIM
    assert build("reference", oov="row").memory().params == (7 + 9 + 6) * DIM


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("backend", STORES)
def test_id_reads_its_row(backend, dtype, make_kjt):
    module = build(backend)
    w = module.store.table_weights()
    emb = module(make_kjt(BAGS, dtype))
    for name in ("user", "item"):
        ids = [b[0] for b in BAGS[name]]
        assert_close(pooled_of(emb, name), w[SCHEMA.feature(name).table_name][ids])
    padded, mask = emb.sequences["hist"]
    for b, ids in enumerate(BAGS["hist"]):
        assert_close(padded[b, : len(ids)], w["item"][ids])
        assert torch.all(padded[b, len(ids) :] == 0)
        assert mask[b].tolist() == [j < len(ids) for j in range(3)]


@pytest.mark.parametrize("backend", STORES)
def test_single_valued_batch_from_an_id_matrix(backend):
    schema = Schema((FeatureSpec("a", 4), FeatureSpec("b", 9), FeatureSpec("c", 9, table="b")))
    module = build_embedding(schema, Full(dim=4), StoreSettings(backend))
    ids = torch.tensor([[0, 8, 8], [3, 2, 0], [1, 0, 5]])
    emb = module(kjt_from_ids(ids, schema.names))
    w = module.store.table_weights()
    assert emb.pooled.shape == (3, 3, 4) and emb.sequences == {}
    assert_close(emb.pooled[:, 0], w["a"][ids[:, 0]])
    assert_close(emb.pooled[:, 1], w["b"][ids[:, 1]])
    assert_close(emb.pooled[:, 2], w["b"][ids[:, 2]])
    assert_close(emb.pooled[0, 1], emb.pooled[0, 2])  # b and c share table b


@pytest.mark.parametrize("backend", STORES)
def test_pooling_of_multi_hot_features(backend, make_kjt):
    module = build(backend)
    w = module.store.table_weights()["tags"]
    emb = module(make_kjt(BAGS))
    for b, ids in enumerate(BAGS["tags"]):
        expected = w[ids].mean(dim=0) if ids else torch.zeros(DIM)  # an empty bag reads zeros
        assert_close(pooled_of(emb, "tags")[b], expected)
    for b, ids in enumerate(BAGS["tags_sum"]):
        assert_close(pooled_of(emb, "tags_sum")[b], w[ids].sum(dim=0))
    # [1, 4, 4]: a duplicate counts twice in the mean
    assert_close(pooled_of(emb, "tags")[0], (w[1] + 2 * w[4]) / 3)


@pytest.mark.parametrize("backend", STORES)
def test_features_naming_one_table_share_rows(backend, make_kjt):
    module = build(backend, opt="sgd", lr=1.0)
    before = module.store.table_weights()
    assert "hist" not in before and "tags_sum" not in before  # no table of their own
    bags = {**BAGS, "item": [[3], [1], [2]], "hist": [[3, 1], [3], []]}
    emb = module(make_kjt(bags))
    padded, _ = emb.sequences["hist"]
    assert_close(padded[0, 0], pooled_of(emb, "item")[0])  # same id, same vector
    assert_close(padded[1, 0], pooled_of(emb, "item")[0])
    assert_close(padded[0, 1], pooled_of(emb, "item")[1])

    gen = torch.Generator().manual_seed(0)
    g_item = torch.randn(3, DIM, generator=gen)
    g_hist = torch.randn(3, 3, DIM, generator=gen)
    ((pooled_of(emb, "item") * g_item).sum() + (padded * g_hist).sum()).backward()
    after = module.store.table_weights()["item"]
    expected = before["item"].clone()
    expected[3] -= g_item[0] + g_hist[0, 0] + g_hist[1, 0]  # both features' grads land in one row
    expected[1] -= g_item[1] + g_hist[0, 1]
    expected[2] -= g_item[2]
    assert_close(after, expected)


@pytest.mark.parametrize("backend", STORES)
@pytest.mark.parametrize(
    "name, bad, cardinality",
    [("user", 6, 6), ("user", 10**9, 6), ("user", -1, 6), ("tags", 5, 5), ("tags_sum", -7, 5), ("hist", 8, 8)],
)
def test_oov_error_refuses_out_of_range_ids(backend, name, bad, cardinality, make_kjt):
    module = build(backend)
    before = module.store.table_weights()
    bags = {k: [list(s) for s in v] for k, v in BAGS.items()}
    bags[name][2] = [bad] if name == "user" else [0, bad]
    with pytest.raises(IndexError, match=rf"feature '{name}': id {bad} is outside \[0, {cardinality}\)"):
        module(make_kjt(bags))
    for t, w in module.store.table_weights().items():
        assert torch.equal(w, before[t])


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("backend", STORES)
def test_oov_row_maps_bad_ids_to_the_last_row(backend, dtype, make_kjt):
    module = build(backend, oov="row")
    w = module.store.table_weights()
    bags = {
        "user": [[6], [-1], [4]],  # 6 is the first out-of-range id
        "item": [[100], [7], [-2**31]],
        "tags": [[1, 99], [-3], []],
        "tags_sum": [[5, 0], [], [4]],
        "hist": [[3, 8, -1], [2], []],
    }
    emb = module(make_kjt(bags, dtype))
    assert_close(pooled_of(emb, "user"), w["user"][[6, 6, 4]])  # in-range ids unchanged
    assert_close(pooled_of(emb, "item"), w["item"][[8, 7, 8]])
    assert_close(pooled_of(emb, "tags")[0], (w["tags"][1] + w["tags"][5]) / 2)
    assert_close(pooled_of(emb, "tags")[1], w["tags"][5])
    assert_close(pooled_of(emb, "tags_sum")[0], w["tags"][5] + w["tags"][0])
    padded, mask = emb.sequences["hist"]
    assert_close(padded[0], w["item"][[3, 8, 8]])  # the OOV row of the shared table
    assert_close(padded[1, 0], w["item"][2])
    assert mask.tolist() == [[True, True, True], [True, False, False], [False, False, False]]


@pytest.mark.parametrize("backend", STORES)
def test_oov_row_is_trained(backend, make_kjt):
    module = build(backend, oov="row", opt="sgd", lr=1.0)
    before = module.store.table_weights()["user"]
    bags = {**BAGS, "user": [[50], [-4], [1]]}
    emb = module(make_kjt(bags))
    pooled_of(emb, "user").sum().backward()
    after = module.store.table_weights()["user"]
    assert_close(after[6], before[6] - 2.0)  # two OOV samples, one row
    assert_close(after[1], before[1] - 1.0)
    assert_close(after[[0, 2, 3, 4, 5]], before[[0, 2, 3, 4, 5]])


def test_tbe_and_reference_agree_with_oov_rows(make_kjt):
    bags = {**BAGS, "user": [[50], [-4], [1]], "hist": [[9, 9, 2], [], [-1]]}
    outs = []
    for backend in STORES:
        module = build(backend, oov="row", opt="rowwise_adagrad", lr=0.1)
        emb = module(make_kjt(bags))
        emb.pooled.sum().backward()
        emb = module(make_kjt(bags))
        outs.append(torch.cat([emb.pooled.flatten(1), emb.sequences["hist"][0].flatten(1)], 1))
    assert_close(outs[0], outs[1])


def test_init_std_is_used():
    schema = Schema((FeatureSpec("big", 4000),))
    module = build_embedding(schema, Full(dim=16, init_std=0.5), StoreSettings("reference"))
    std = module.store.table_weights()["big"].std().item()
    assert 0.45 < std < 0.55


def test_tbe_needs_dims_multiple_of_4():
    with pytest.raises(ValueError, match=r"'user' has dim=6"):
        build_embedding(SCHEMA, Full(dim=6), StoreSettings("tbe"))
    assert build_embedding(SCHEMA, Full(dim=6), StoreSettings("reference")).dim == 6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dim": 0}, r"Full\.dim must be >= 1, got 0"),
        ({"dim": -8}, r"Full\.dim must be >= 1, got -8"),
        ({"oov": "hash"}, r"Full\.oov must be one of \('error', 'row'\), got 'hash'"),
        ({"init_std": 0.0}, r"Full\.init_std must be > 0, got 0\.0"),
        ({"init_std": float("nan")}, r"Full\.init_std must be > 0, got nan"),
    ],
)
def test_full_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Full(**kwargs)
