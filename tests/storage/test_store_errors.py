"""Bad input and bad settings are refused with an error that names the offending value,
by every store, before any kernel sees it."""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.storage import (
    STORES,
    EmbeddingOptimizer,
    LookupSpec,
    StoreLayout,
    StoreSettings,
    TableSpec,
    build_store,
)

LAYOUT = StoreLayout(
    (TableSpec("users", 5, 4), TableSpec("item_rows", 7, 8)),
    (LookupSpec("user", "users"), LookupSpec("tags", "item_rows", "mean"), LookupSpec("hist", "item_rows", "none", 3)),
)
GOOD = {"user": [[1], [4]], "tags": [[0, 6], []], "hist": [[2, 3, 6], [5]]}


@pytest.fixture(params=STORES)
def store(request):
    return build_store(LAYOUT, StoreSettings(request.param))


def test_good_input_is_accepted(store, make_kjt):
    assert store(make_kjt(GOOD)).shape == (2, LAYOUT.width)


# -- ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, bad, table, rows",
    [("user", 5, "users", 5), ("user", 1000, "users", 5), ("tags", 7, "item_rows", 7), ("hist", 9, "item_rows", 7)],
)
def test_id_out_of_range_is_refused(store, make_kjt, key, bad, table, rows):
    bags = {k: [list(s) for s in v] for k, v in GOOD.items()}
    bags[key][1] = bags[key][1] + [bad] if key != "user" else [bad]
    with pytest.raises(IndexError, match=rf"key '{key}'.*{bad}.*table '{table}'.*{rows} rows"):
        store(make_kjt(bags))


@pytest.mark.parametrize("key, table", [("user", "users"), ("tags", "item_rows"), ("hist", "item_rows")])
def test_negative_id_is_refused(store, make_kjt, key, table):
    bags = {k: [list(s) for s in v] for k, v in GOOD.items()}
    bags[key][0] = [-3]
    with pytest.raises(IndexError, match=rf"key '{key}'.*-3.*table '{table}'"):
        store(make_kjt(bags))


def test_bad_ids_refused_in_int32_too(store, make_kjt):
    bags = {**GOOD, "user": [[1], [5]]}
    with pytest.raises(IndexError, match="5"):
        store(make_kjt(bags, torch.int32))


def test_refused_batch_leaves_weights_untouched(store, make_kjt):
    before = store.table_weights()
    with pytest.raises(IndexError):
        store(make_kjt({**GOOD, "user": [[1], [-1]]})).sum().backward()
    for name, w in store.table_weights().items():
        assert torch.equal(w, before[name])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int16, torch.bool])
def test_non_integer_ids_are_refused(store, dtype):
    kjt = KeyedJaggedTensor.from_lengths_sync(
        ["user", "tags", "hist"], torch.tensor([1, 2, 3], dtype=dtype), torch.tensor([1, 1, 1, 0, 0, 0])
    )
    with pytest.raises(TypeError, match=str(dtype).replace(".", r"\.")):
        store(kjt)


# -- keys --------------------------------------------------------------------------------


def test_missing_key_is_refused(store, make_kjt):
    with pytest.raises(KeyError, match=r"missing \['tags'\]"):
        store(make_kjt({"user": GOOD["user"], "hist": GOOD["hist"]}))


def test_unknown_key_is_refused(store, make_kjt):
    with pytest.raises(KeyError, match=r"unknown \['age'\]"):
        store(make_kjt({**GOOD, "age": [[1], [2]]}))


def test_reordered_keys_are_refused(store, make_kjt):
    reordered = {"tags": GOOD["tags"], "user": GOOD["user"], "hist": GOOD["hist"]}
    with pytest.raises(KeyError, match=r"in that order.*got \['tags', 'user', 'hist'\]"):
        store(make_kjt(reordered))


# -- batch shape -------------------------------------------------------------------------


def test_empty_batch_is_refused(store):
    kjt = KeyedJaggedTensor.from_lengths_sync(
        ["user", "tags", "hist"], torch.tensor([], dtype=torch.int64), torch.tensor([], dtype=torch.int64)
    )
    assert kjt.stride() == 0
    with pytest.raises(ValueError, match="empty batch"):
        store(kjt)


@pytest.mark.parametrize("backend", STORES)
def test_batch_of_only_empty_bags_is_fine(backend, make_kjt):
    """Not an empty batch: samples whose bags are all empty give zero rows, and backward
    through them changes nothing."""
    layout = StoreLayout((TableSpec("t", 3, 4),), (LookupSpec("a", "t", "mean"), LookupSpec("s", "t", "none", 2)))
    store = build_store(layout, StoreSettings(backend, EmbeddingOptimizer("adagrad")))
    before = store.table_weights()["t"]
    out = store(make_kjt({"a": [[], []], "s": [[], []]}))
    assert torch.equal(out, torch.zeros(2, 12))
    out.sum().backward()
    assert torch.equal(store.table_weights()["t"], before)


def test_sequence_longer_than_max_len_is_refused(store, make_kjt):
    with pytest.raises(ValueError, match=r"'hist'.*4 ids.*max_len=3"):
        store(make_kjt({**GOOD, "hist": [[1, 2, 3, 4], []]}))


# -- settings ----------------------------------------------------------------------------


@pytest.mark.parametrize("dim, suggestion", [(6, 8), (3, 4), (10, 12)])
def test_tbe_dim_not_multiple_of_4_is_refused(dim, suggestion):
    layout = StoreLayout(
        (TableSpec("ok", 3, 8), TableSpec("odd", 3, dim)), (LookupSpec("j", "ok"), LookupSpec("k", "odd"))
    )
    with pytest.raises(ValueError, match=rf"'odd'.*dim={dim}.*multiples of 4.*dim={suggestion}"):
        build_store(layout, StoreSettings("tbe"))
    assert build_store(layout, StoreSettings("reference")).memory().params == 3 * 8 + 3 * dim


def test_adam_on_tbe_cpu_is_refused():
    with pytest.raises(ValueError, match="'adam'.*CPU"):
        build_store(LAYOUT, StoreSettings("tbe", EmbeddingOptimizer("adam")))
    assert build_store(LAYOUT, StoreSettings("reference", EmbeddingOptimizer("adam"))).optimizer.name == "adam"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rows": 0}, r"rows of table 't' must be >= 1, got 0"),
        ({"rows": -4}, r"rows.*got -4"),
        ({"dim": 0}, r"dim of table 't' must be >= 1, got 0"),
        ({"name": ""}, r"name"),
        ({"init_std": -0.1}, r"init_std.*-0\.1"),
        ({"init_bound": -0.5}, r"init_bound.*-0\.5"),
    ],
)
def test_table_spec_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TableSpec(**{"name": "t", "rows": 4, "dim": 4, **kwargs})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"pooling": "max"}, r"pooling of key 'k' must be sum, mean or none, got 'max'"),
        ({"pooling": "none"}, r"max_len must be > 0 exactly when pooling is 'none'.*max_len=0"),
        ({"pooling": "none", "max_len": -2}, r"max_len=-2"),
        ({"pooling": "sum", "max_len": 5}, r"pooling='sum', max_len=5"),
        ({"pooling": "mean", "max_len": 1}, r"pooling='mean', max_len=1"),
    ],
)
def test_lookup_spec_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LookupSpec("k", "t", **kwargs)


def test_lookup_spec_slots():
    assert LookupSpec("k", "t").slots == 1
    assert LookupSpec("k", "t", "mean").slots == 1
    assert LookupSpec("k", "t", "none", 7).slots == 7


def test_store_layout_validation():
    t = TableSpec("t", 3, 4)
    with pytest.raises(ValueError, match=r"duplicated names: \['t', 't'\]"):
        StoreLayout((t, TableSpec("t", 5, 8)), (LookupSpec("k", "t"),))
    with pytest.raises(ValueError, match=r"duplicated keys: \['k', 'k'\]"):
        StoreLayout((t,), (LookupSpec("k", "t"), LookupSpec("k", "t", "mean")))
    with pytest.raises(ValueError, match=r"lookup 'k' reads table 'nope', which is not among \['t'\]"):
        StoreLayout((t,), (LookupSpec("k", "nope"),))


@pytest.mark.parametrize("backend", STORES)
@pytest.mark.parametrize("name", ["items", "keys", "values", "update", "training", "user.id"])
def test_any_table_name_is_served(backend, name, make_kjt):
    """Table names are the user's (recsys tables are called 'items'); a store must not
    clash with its own attribute names or refuse a dotted name while building."""
    layout = StoreLayout((TableSpec(name, 4, 4),), (LookupSpec("k", name),))
    store = build_store(layout, StoreSettings(backend, EmbeddingOptimizer("sgd", lr=1.0)))
    before = store.table_weights()[name]
    out = store(make_kjt({"k": [[2], [2]]}))
    torch.testing.assert_close(out, before[[2, 2]])
    out.sum().backward()
    torch.testing.assert_close(store.table_weights()[name][2], before[2] - 2.0)
    assert list(store.ebc_state_dict()) == [f"embedding_bags.{name}.weight"]


def test_store_layout_geometry():
    layout = StoreLayout(
        [TableSpec("a", 3, 4), TableSpec("b", 5, 8)],  # lists are frozen to tuples
        [LookupSpec("x", "a"), LookupSpec("s", "b", "none", 2), LookupSpec("y", "b", "mean")],
    )
    assert isinstance(layout.tables, tuple) and isinstance(layout.lookups, tuple)
    assert layout.keys == ("x", "s", "y")
    assert layout.width == 4 + 2 * 8 + 8
    assert layout.column_slices() == {"x": slice(0, 4), "s": slice(4, 20), "y": slice(20, 28)}
    assert layout.params() == 3 * 4 + 5 * 8
    assert layout.dim_of("s") == 8
    configs = {c.name: c for c in layout.embedding_bag_configs()}
    assert configs["a"].feature_names == ["x"] and configs["a"].num_embeddings == 3
    assert configs["b"].feature_names == ["s", "y"] and configs["b"].embedding_dim == 8


def test_a_table_no_key_reads_is_refused_or_works_on_every_store(make_kjt):
    """A table of a dim no lookup reads must not crash inside fbgemm (a bare assert there):
    either the layout is refused naming the table, or every store serves it."""
    tables = (TableSpec("a", 4, 4), TableSpec("unread", 3, 8))
    try:
        layout = StoreLayout(tables, (LookupSpec("x", "a"),))
    except ValueError as e:
        assert "'unread'" in str(e)
        return
    kjt = make_kjt({"x": [[1], [3]]})
    outs = []
    for backend in STORES:
        try:
            store = build_store(layout, StoreSettings(backend, EmbeddingOptimizer("sgd")))
        except ValueError as e:
            assert "'unread'" in str(e)
            continue
        outs.append(store(kjt))
        assert store.memory().params == 4 * 4 + 3 * 8
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "adamw"}, r"name must be one of .*'sgd'.*got 'adamw'"),
        ({"lr": 0.0}, r"lr must be > 0, got 0\.0"),
        ({"lr": -1.0}, r"lr must be > 0, got -1\.0"),
        ({"lr": float("nan")}, r"lr must be > 0, got nan"),
        ({"name": "sgd", "weight_decay": 0.1}, r"weight_decay=0\.1 is only supported with adam; got name='sgd'"),
        ({"name": "adam", "beta1": 1.0}, r"beta1.*1\.0"),
        ({"name": "adam", "beta2": -0.5}, r"beta2.*-0\.5"),
    ],
)
def test_embedding_optimizer_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EmbeddingOptimizer(**kwargs)


def test_embedding_optimizer_state_shapes():
    shapes = {n: EmbeddingOptimizer(n).state_shapes(10, 4) for n in ("sgd", "adagrad", "rowwise_adagrad", "adam")}
    assert shapes == {"sgd": [], "adagrad": [(10, 4)], "rowwise_adagrad": [(10,)], "adam": [(10, 4), (10, 4)]}
    assert EmbeddingOptimizer("adam").state_params(10, 4) == 80
    assert EmbeddingOptimizer("adam", weight_decay=0.01).weight_decay == 0.01


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"backend": "fbgemm"}, r"backend must be one of \('tbe', 'reference'\), got 'fbgemm'"),
        ({"backend": "reference", "device": "cuda"}, r"CPU only, got device='cuda'"),
        ({"backend": "reference", "device": "cuda:1"}, r"device='cuda:1'"),
    ],
)
def test_store_settings_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StoreSettings(**kwargs)


def test_store_settings_defaults_and_build():
    s = StoreSettings()
    assert (s.backend, s.optimizer.name, s.seed, s.device) == ("tbe", "rowwise_adagrad", 0, "cpu")
    assert type(build_store(LAYOUT)).__name__ == "TBEStore"
    assert type(build_store(LAYOUT, StoreSettings("reference"))).__name__ == "ReferenceStore"


@pytest.mark.parametrize("backend", STORES)
def test_fused_parameters_hold_the_weights(backend):
    store = build_store(LAYOUT, StoreSettings(backend))
    fused = store.fused_parameters()
    assert fused and all(isinstance(p, torch.nn.Parameter) for p in fused)
    assert sum(p.numel() for p in fused) >= LAYOUT.params()
