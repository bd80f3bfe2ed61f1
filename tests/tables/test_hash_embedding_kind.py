"""Hash embeddings against a plain-PyTorch version of their formula (values and gradients):
sum_i p_i(x) E[h_i(x)], components from a shared pool, importance weights hashed from a
second table stored ceil4(k) wide."""

from __future__ import annotations

import pytest
import torch
from kind_formula import BAGS, BIG, RAW, SCHEMA, check_formula, formula_rows, pool, sgd
from torch.testing import assert_close

from recemb.hashing import feature_salt
from recemb.storage import STORES, EmbeddingOptimizer, StoreSettings
from recemb.tables import HashEmbedding, build_embedding
from recemb.tables.budget import full_bytes


@pytest.mark.parametrize("bags", [BAGS, RAW], ids=["in_range", "any_int64"])
@pytest.mark.parametrize("hashes", [2, 3])
@pytest.mark.parametrize("backend", STORES)
def test_hash_embedding_equals_its_formula(backend, hashes, bags, make_kjt):
    cfg = HashEmbedding(dim=8, hashes=hashes, buckets=8, weight_rows=16, seed=2)
    module = build_embedding(SCHEMA, cfg, sgd(backend))
    tables = {t.name: t for t in module.store.layout.tables}
    assert (tables["user#pool"].rows, tables["user#weights"].rows, tables["user#weights"].dim) == (8, 16, 4)
    k = hashes

    def bag(f, ids, w):
        t, ids = f.table_name, torch.tensor(ids, dtype=torch.int64)
        n = f.cardinality  # genres (12 ids): 12 weight rows, so its weights are read unhashed
        components = [
            pool(f, w[f"{t}#pool"][formula_rows(ids, feature_salt(cfg.seed, t, i), tables[f"{t}#pool"].rows, n)])
            for i in range(k)
        ]
        rows = formula_rows(ids, feature_salt(cfg.seed, t, k), tables[f"{t}#weights"].rows, n)
        p = pool(f, w[f"{t}#weights"][rows])[:k]  # the first k of the ceil4(k) stored columns
        return sum(p[i] * components[i] for i in range(k))

    check_formula(module, make_kjt, bag, bags)


def test_the_importance_tables_padding_is_never_read_or_trained(make_kjt):
    settings = StoreSettings("tbe", EmbeddingOptimizer("adagrad"))
    module = build_embedding(SCHEMA, HashEmbedding(dim=8, hashes=3), settings)
    before = module.store.table_weights()["item#weights"]
    out = module(make_kjt(BAGS))
    (out.pooled.sum() + out.sequences["hist"][0].sum()).backward()
    after = module.store.table_weights()["item#weights"]
    assert torch.equal(after[:, 3], before[:, 3]) and not torch.equal(after[:, :3], before[:, :3])


def test_init_gives_a_full_tables_spread():
    module = build_embedding(BIG, HashEmbedding(dim=16, hashes=4, init_std=0.1), StoreSettings("reference"))
    tables = {t.name: t for t in module.store.layout.tables}
    assert tables["C4#pool"].init_std == pytest.approx(0.05) and tables["C4#weights"].init_std == 1.0


@pytest.mark.parametrize("share", [0.2, 0.5, 0.8])
def test_hash_embedding_budget_ratio(share):
    cfg = HashEmbedding(dim=16, budget_ratio=0.1, weight_share=share)
    module = build_embedding(BIG, cfg, StoreSettings("reference"))
    full = full_bytes(BIG, 16)
    assert 0.05 * full <= module.memory().bytes <= 0.1 * full
    weights = sum(t.rows * t.dim for t in module.store.layout.tables if t.name.endswith("#weights"))
    assert weights * 4 <= share * 0.1 * full * 1.01


def test_hash_embedding_budget_below_the_minimum_is_refused():
    with pytest.raises(ValueError, match=r"HashEmbedding: budget=200 bytes is below the smallest configuration"):
        build_embedding(BIG, HashEmbedding(dim=16, budget=200), StoreSettings("reference"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hashes": 0}, r"HashEmbedding\.hashes must be >= 1, got 0"),
        ({"weight_share": 1.0}, r"HashEmbedding\.weight_share must be in \(0, 1\), got 1\.0"),
        ({"weight_rows": 10, "budget_ratio": 0.1}, r"\['weight_rows'\] and a budget both set the table sizes"),
    ],
)
def test_hash_embedding_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HashEmbedding(**kwargs)


@pytest.mark.parametrize("opt", ["adagrad", "rowwise_adagrad"])
def test_tbe_store_serves_interleaved_widths_like_the_reference(opt, make_kjt):
    """Guards the TBE store's regrouping that kinds of two widths (this one's pool and
    weights) rely on: fbgemm's CPU backward steps a table once per run of consecutive
    features, so a row read by keys on both sides of another width's key got two optimizer
    steps. (A storage test at heart; it sits here with the kind that needed it.)"""
    from recemb.storage import LookupSpec, StoreLayout, TableSpec, build_store

    layout = StoreLayout(
        (TableSpec("a", 5, 8), TableSpec("b", 5, 4)),
        (LookupSpec("a1", "a"), LookupSpec("b", "b"), LookupSpec("a2", "a"), LookupSpec("s", "a", "none", 2)),
    )
    kjt = make_kjt({"a1": [[2], [1]], "b": [[2], [0]], "a2": [[2], [4]], "s": [[2, 3], []]})
    stores = [build_store(layout, StoreSettings(b, EmbeddingOptimizer(opt, lr=0.1))) for b in ("tbe", "reference")]
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(2, layout.width, generator=gen)
    with torch.no_grad():
        assert_close(stores[0](kjt), stores[1](kjt))
    for store in stores:
        (store(kjt) * w).sum().backward()
    for name, weights in stores[1].table_weights().items():
        assert_close(stores[0].table_weights()[name], weights)
        for a, b in zip(stores[0].optimizer_states()[name], stores[1].optimizer_states()[name]):
            assert_close(a, b)
