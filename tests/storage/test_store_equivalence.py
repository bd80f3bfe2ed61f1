"""The fused TBE store equals the plain-PyTorch reference store, which defines correctness.

Forward values, and after several steps of forward + backward (the optimizer runs inside
backward) table weights and optimizer states, for every optimizer the TBE store runs on
the CPU and every input shape: single ids, multi-hot bags (sum and mean, empty bags),
sequences (empty and full-length histories), tables of several dims (merged by dim inside
TBE), several keys reading one table, int32 and int64 ids, duplicate ids in a batch.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from recemb.storage import (
    STORES,
    EmbeddingOptimizer,
    LookupSpec,
    StoreLayout,
    StoreSettings,
    TableSpec,
    build_store,
)

TBE_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad")
BATCH = 6
STEPS = 4

# name -> (layout, keys fed as multi-hot bags)
LAYOUTS: dict[str, tuple[StoreLayout, tuple[str, ...]]] = {
    # one table per dim: TBE needs no row offsets, no sequence expansion, no mean scale
    "single": (
        StoreLayout(
            (TableSpec("user", 9, 4), TableSpec("item", 12, 8)),
            (LookupSpec("user", "user"), LookupSpec("item", "item")),
        ),
        (),
    ),
    # two tables of dim 8 merged in TBE, one table read by a sum and a mean key
    "multi_hot": (
        StoreLayout(
            (TableSpec("tag", 6, 8), TableSpec("genre", 5, 8), TableSpec("city", 7, 4)),
            (
                LookupSpec("tags_sum", "tag", "sum"),
                LookupSpec("genres_mean", "genre", "mean"),
                LookupSpec("tags_mean", "tag", "mean"),
                LookupSpec("city", "city"),
            ),
        ),
        ("tags_sum", "genres_mean", "tags_mean"),
    ),
    # a target item and the history of items read one table
    "sequence": (
        StoreLayout(
            (TableSpec("user", 9, 8), TableSpec("item", 12, 8)),
            (LookupSpec("user", "user"), LookupSpec("target", "item"), LookupSpec("hist", "item", "none", 5)),
        ),
        (),
    ),
    # everything at once: dims 4, 8 and 12, uniform init, sequences between pooled keys
    "mixed": (
        StoreLayout(
            (
                TableSpec("item", 12, 8),
                TableSpec("user", 9, 4),
                TableSpec("tag", 6, 8, init_bound=0.1),
                TableSpec("cat", 5, 12),
                TableSpec("city", 4, 4, init_std=0.05),
            ),
            (
                LookupSpec("user", "user"),
                LookupSpec("city", "city", "mean"),
                LookupSpec("hist", "item", "none", 4),
                LookupSpec("target", "item"),
                LookupSpec("tags", "tag", "mean"),
                LookupSpec("clicked_tags", "tag", "none", 3),
                LookupSpec("cats", "cat", "sum"),
            ),
        ),
        ("tags", "cats"),
    ),
    # keys of one dim interleaved with keys of another: the TBE features of one (merged)
    # table are not contiguous; 'a' is read by two keys on either side of 'y'
    "interleaved": (
        StoreLayout(
            (TableSpec("a", 5, 4), TableSpec("b", 6, 8), TableSpec("c", 4, 4)),
            (
                LookupSpec("x", "a"),
                LookupSpec("y", "b", "sum"),
                LookupSpec("z", "a", "sum"),
                LookupSpec("w", "c"),
                LookupSpec("h", "b", "none", 3),
            ),
        ),
        ("y", "z"),
    ),
}


def pair(layout: StoreLayout, opt: str = "rowwise_adagrad", lr: float = 0.1, seed: int = 0):
    """The TBE store and the reference store of one layout, same optimizer and seed."""
    optimizer = EmbeddingOptimizer(opt, lr=lr)
    return tuple(build_store(layout, StoreSettings(backend, optimizer, seed)) for backend in ("tbe", "reference"))


def assert_same_state(a, b) -> None:
    wa, wb = a.table_weights(), b.table_weights()
    assert wa.keys() == wb.keys()
    for name in wa:
        assert_close(wa[name], wb[name], msg=lambda m, name=name: f"table {name!r}: {m}")
    sa, sb = a.optimizer_states(), b.optimizer_states()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert len(sa[name]) == len(sb[name])
        for x, y in zip(sa[name], sb[name]):
            assert_close(x, y, msg=lambda m, name=name: f"optimizer state of table {name!r}: {m}")


# -- training equivalence ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32], ids=["int64", "int32"])
@pytest.mark.parametrize("opt", TBE_OPTIMIZERS)
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_tbe_equals_reference_over_training(name, opt, dtype, make_kjt, make_bags, specs_of):
    layout, multi = LAYOUTS[name]
    tbe, ref = pair(layout, opt)
    initial = ref.table_weights()
    assert_same_state(tbe, ref)  # same seed -> same initial weights and zero states
    gen = torch.Generator().manual_seed(list(LAYOUTS).index(name) * 10 + TBE_OPTIMIZERS.index(opt))
    for _ in range(STEPS):
        kjt = make_kjt(make_bags(gen, specs_of(layout, multi), BATCH), dtype)
        out_t, out_r = tbe(kjt), ref(kjt)
        assert out_t.shape == out_r.shape == (BATCH, layout.width)
        assert_close(out_t, out_r)
        w = torch.randn(out_t.shape, generator=gen)
        (out_t * w).sum().backward()
        (out_r * w).sum().backward()
        assert_same_state(tbe, ref)
    changed = [n for n, w in ref.table_weights().items() if not torch.equal(w, initial[n])]
    assert sorted(changed) == sorted(t.name for t in layout.tables)  # every table trained


@pytest.mark.parametrize("opt", TBE_OPTIMIZERS)
def test_duplicate_ids_are_summed_then_updated_once(opt, make_kjt):
    """fbgemm's exact optimizers: a row's grads within a batch are summed, then the row is
    updated once; rows not in the batch are untouched."""
    layout = StoreLayout(
        (TableSpec("t", 5, 4),),
        (
            LookupSpec("x", "t"),
            LookupSpec("y", "t", "sum"),
            LookupSpec("z", "t", "mean"),
            LookupSpec("h", "t", "none", 3),
        ),
    )
    bags = {"x": [[3], [3]], "y": [[3, 3], [1]], "z": [[3, 1, 3], []], "h": [[3, 3], [3]]}
    kjt = make_kjt(bags)
    lr, eps = 0.5, 1e-8
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(2, layout.width, generator=gen)
    parts = {k: w[:, cols] for k, cols in layout.column_slices().items()}
    h = parts["h"].view(2, 3, 4)
    grad = torch.zeros(5, 4)
    grad[3] = parts["x"][0] + parts["x"][1] + 2 * parts["y"][0] + 2 / 3 * parts["z"][0] + h[0, 0] + h[0, 1] + h[1, 0]
    grad[1] = parts["y"][1] + 1 / 3 * parts["z"][0]
    for store in pair(layout, opt, lr=lr):
        before = store.table_weights()["t"]
        (store(kjt) * w).sum().backward()
        after = store.table_weights()["t"]
        expected = before.clone()
        for r in (1, 3):
            g = grad[r]
            if opt == "sgd":
                expected[r] -= lr * g
            elif opt == "adagrad":
                expected[r] -= lr * g / ((g * g).sqrt() + eps)
            else:
                expected[r] -= lr * g / ((g * g).mean().sqrt() + eps)
        assert_close(after, expected, msg=lambda m, store=store: f"{type(store).__name__}: {m}")
        if opt == "rowwise_adagrad":
            state = store.optimizer_states()["t"][0]
            assert_close(state, torch.stack([(grad[r] ** 2).mean() for r in range(5)]))


@pytest.mark.parametrize("opt", TBE_OPTIMIZERS)
def test_one_table_read_by_keys_on_either_side_of_another_dim(opt, make_kjt):
    """Keys x and z read table 'a' (dim 4), key y between them reads 'b' (dim 8): row 1 of
    'a' read by x and z must get ONE update from its summed grads, as when x and z are
    adjacent."""
    layout = StoreLayout(
        (TableSpec("a", 5, 4), TableSpec("b", 5, 8)),
        (LookupSpec("x", "a"), LookupSpec("y", "b"), LookupSpec("z", "a")),
    )
    kjt = make_kjt({"x": [[1]], "y": [[2]], "z": [[1]]})
    w = torch.randn(1, layout.width, generator=torch.Generator().manual_seed(0))
    lr = 0.5
    g = w[0, 0:4] + w[0, 12:16]  # x's and z's output columns
    for store in pair(layout, opt, lr=lr):
        before = store.table_weights()["a"]
        (store(kjt) * w).sum().backward()
        expected = before.clone()
        if opt == "sgd":
            expected[1] -= lr * g
        elif opt == "adagrad":
            expected[1] -= lr * g / (g.abs() + 1e-8)
        else:
            expected[1] -= lr * g / ((g * g).mean().sqrt() + 1e-8)
        assert_close(store.table_weights()["a"], expected, msg=lambda m, store=store: f"{type(store).__name__}: {m}")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_forward_equal_on_arbitrary_bags(data, make_kjt):
    layout, _ = LAYOUTS["mixed"]
    batch = data.draw(st.integers(1, 5), label="batch")
    bags = {}
    for lk in layout.lookups:
        rows = layout.table(lk.table).rows
        longest = lk.max_len if lk.pooling == "none" else 5
        sample = st.lists(st.integers(0, rows - 1), max_size=longest)
        bags[lk.key] = data.draw(st.lists(sample, min_size=batch, max_size=batch), label=lk.key)
    dtype = data.draw(st.sampled_from([torch.int32, torch.int64]), label="dtype")
    tbe, ref = pair(layout)
    kjt = make_kjt(bags, dtype)
    with torch.no_grad():
        assert_close(tbe(kjt), ref(kjt))


@pytest.mark.parametrize(
    "backend, opt", [(b, o) for b in STORES for o in TBE_OPTIMIZERS] + [("reference", "adam")]
)
def test_forward_without_backward_leaves_no_trace(backend, opt, make_kjt):
    """A forward whose output is dropped (an evaluation pass in training mode) must not
    change what the next training step updates: only the rows of that step's batch move."""
    layout = StoreLayout((TableSpec("t", 6, 4),), (LookupSpec("x", "t"),))
    optimizer = EmbeddingOptimizer(opt, lr=0.1)
    a = build_store(layout, StoreSettings(backend, optimizer))
    b = build_store(layout, StoreSettings(backend, optimizer))
    w = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    for store in (a, b):  # rows 0 and 5 get optimizer state (Adam's momentum) first
        (store(make_kjt({"x": [[0], [5]]})) * w).sum().backward()
    for _ in range(2):
        a(make_kjt({"x": [[0], [5]]}))  # dropped: rows 0 and 5 are not trained by this step
        (a(make_kjt({"x": [[1], [2]]})) * w).sum().backward()
        (b(make_kjt({"x": [[1], [2]]})) * w).sum().backward()
        assert_same_state(a, b)


# -- output layout -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", STORES)
def test_split_shapes_and_padded_sequences(backend, make_kjt, make_bags, specs_of):
    layout, multi = LAYOUTS["mixed"]
    store = build_store(layout, StoreSettings(backend))
    gen = torch.Generator().manual_seed(3)
    bags = make_bags(gen, specs_of(layout, multi), BATCH)
    out = store(make_kjt(bags))
    parts = store.split(out)
    assert list(parts) == list(layout.keys)
    for lk in layout.lookups:
        dim = layout.dim_of(lk.key)
        expected = (BATCH, lk.max_len, dim) if lk.pooling == "none" else (BATCH, dim)
        assert parts[lk.key].shape == expected, lk.key
    assert_close(torch.cat([p.reshape(BATCH, -1) for p in parts.values()], dim=1), out)

    weights = store.table_weights()
    for key in ("hist", "clicked_tags"):
        lk = layout.lookup(key)
        for b, ids in enumerate(bags[key]):
            n = len(ids)
            assert_close(parts[key][b, :n], weights[lk.table][ids])  # item j of sample b at [b, j]
            assert torch.all(parts[key][b, n:] == 0), f"{key} sample {b} not zero past length {n}"
    assert len(bags["hist"][0]) == 0 and len(bags["hist"][1]) == 4  # empty and full histories were covered
    for key in ("tags", "city"):  # mean keys
        for b, ids in enumerate(bags[key]):
            expected = weights[layout.lookup(key).table][ids].mean(0) if ids else torch.zeros(layout.dim_of(key))
            assert_close(parts[key][b], expected)
    for key in ("cats", "user"):  # sum keys
        for b, ids in enumerate(bags[key]):
            assert_close(parts[key][b], weights[layout.lookup(key).table][ids].sum(0))


@pytest.mark.parametrize("backend", STORES)
def test_padding_receives_no_gradient(backend, make_kjt):
    """Rows of padded positions must not be updated (no phantom id 0 or -1 reads)."""
    layout = StoreLayout((TableSpec("item", 6, 4),), (LookupSpec("hist", "item", "none", 4),))
    store = build_store(layout, StoreSettings(backend, EmbeddingOptimizer("sgd", lr=1.0)))
    before = store.table_weights()["item"]
    store(make_kjt({"hist": [[2], [], [2, 4]]})).sum().backward()
    after = store.table_weights()["item"]
    untouched = [0, 1, 3, 5]
    assert_close(after[untouched], before[untouched])
    assert_close(after[2], before[2] - 2.0)
    assert_close(after[4], before[4] - 1.0)


# -- memory ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend, opt", [(b, o) for b in STORES for o in TBE_OPTIMIZERS] + [("reference", "adam")]
)
def test_memory_report(backend, opt):
    layout, _ = LAYOUTS["mixed"]
    store = build_store(layout, StoreSettings(backend, EmbeddingOptimizer(opt)))
    report = store.memory()
    rows = sum(t.rows for t in layout.tables)
    elements = sum(t.rows * t.dim for t in layout.tables)
    assert report.params == elements == 12 * 8 + 9 * 4 + 6 * 8 + 5 * 12 + 4 * 4
    assert report.bytes == 4 * elements
    expected_optimizer = {"sgd": 0, "adagrad": 4 * elements, "rowwise_adagrad": 4 * rows, "adam": 8 * elements}[opt]
    assert report.optimizer_bytes == expected_optimizer
    assert report.total_bytes == report.bytes + report.optimizer_bytes
    # the report agrees with the tensors the store really holds
    held = sum(s.numel() for states in store.optimizer_states().values() for s in states)
    assert report.optimizer_bytes == 4 * held
    assert report.params == sum(w.numel() for w in store.table_weights().values())


def test_memory_reports_add():
    layout, _ = LAYOUTS["single"]
    a = build_store(layout, StoreSettings("reference", EmbeddingOptimizer("adagrad"))).memory()
    b = build_store(layout, StoreSettings("reference", EmbeddingOptimizer("sgd"))).memory()
    total = a + b
    assert (total.params, total.bytes, total.optimizer_bytes) == (
        a.params + b.params,
        a.bytes + b.bytes,
        a.optimizer_bytes + b.optimizer_bytes,
    )
    assert total.total_bytes == a.total_bytes + b.total_bytes


# -- checkpoints across store kinds ------------------------------------------------------


@pytest.mark.parametrize("src, dst", [("tbe", "reference"), ("reference", "tbe"), ("tbe", "tbe")])
@pytest.mark.parametrize("opt", ["adagrad", "rowwise_adagrad"])
def test_store_state_round_trip_across_stores(src, dst, opt, make_kjt, make_bags, specs_of):
    layout, multi = LAYOUTS["mixed"]
    optimizer = EmbeddingOptimizer(opt, lr=0.1)
    a = build_store(layout, StoreSettings(src, optimizer, seed=0))
    gen = torch.Generator().manual_seed(11)
    batches = [make_kjt(make_bags(gen, specs_of(layout, multi), BATCH)) for _ in range(5)]
    grads = [torch.randn(BATCH, layout.width, generator=gen) for _ in range(5)]
    for kjt, w in zip(batches[:2], grads[:2]):
        (a(kjt) * w).sum().backward()

    state = a.store_state()
    b = build_store(layout, StoreSettings(dst, optimizer, seed=1))
    assert not torch.equal(b.table_weights()["item"], a.table_weights()["item"])  # really loaded below
    b.load_store_state(state)
    assert_same_state(a, b)
    with torch.no_grad():
        assert_close(a(batches[2]), b(batches[2]))

    saved_item = state["weights"]["item"].clone()  # type: ignore[index]
    for kjt, w in zip(batches[2:], grads[2:]):
        out_a, out_b = a(kjt), b(kjt)
        assert_close(out_a, out_b)
        (out_a * w).sum().backward()
        (out_b * w).sum().backward()
        assert_same_state(a, b)
    assert torch.equal(state["weights"]["item"], saved_item)  # type: ignore[index]  # a copy, not a view


def test_reference_adam_round_trip_continues_identically(make_kjt, make_bags, specs_of):
    """A checkpoint must resume Adam exactly, bias correction (its step count) included."""
    layout, multi = LAYOUTS["sequence"]
    optimizer = EmbeddingOptimizer("adam", lr=0.01)
    a = build_store(layout, StoreSettings("reference", optimizer))
    gen = torch.Generator().manual_seed(5)
    batches = [make_kjt(make_bags(gen, specs_of(layout, multi), BATCH)) for _ in range(5)]
    grads = [torch.randn(BATCH, layout.width, generator=gen) for _ in range(5)]
    for kjt, w in zip(batches[:3], grads[:3]):
        (a(kjt) * w).sum().backward()
    b = build_store(layout, StoreSettings("reference", optimizer, seed=1))
    b.load_store_state(a.store_state())
    for kjt, w in zip(batches[3:], grads[3:]):
        (a(kjt) * w).sum().backward()
        (b(kjt) * w).sum().backward()
    assert_same_state(a, b)


# -- torchrec interchange ----------------------------------------------------------------

EBC_LAYOUT = StoreLayout(
    (
        TableSpec("user", 9, 4),
        TableSpec("tag", 6, 8),
        TableSpec("genre", 5, 8),
        TableSpec("item", 12, 8),
    ),
    (
        LookupSpec("user", "user"),
        LookupSpec("tags", "tag", "sum"),
        LookupSpec("liked_tags", "tag", "sum"),
        LookupSpec("genres", "genre", "mean"),
        LookupSpec("target", "item"),
        LookupSpec("hist", "item", "none", 3),
    ),
)
EBC_MULTI = ("tags", "liked_tags", "genres")
POOLED_KEYS = [lk.key for lk in EBC_LAYOUT.lookups if lk.pooling != "none"]


@pytest.mark.parametrize("backend", STORES)
def test_embedding_bag_collection_gives_the_store_outputs(backend, make_kjt, make_bags, specs_of):
    store = build_store(EBC_LAYOUT, StoreSettings(backend, EmbeddingOptimizer("sgd", lr=0.5)))
    gen = torch.Generator().manual_seed(2)
    kjt = make_kjt(make_bags(gen, specs_of(EBC_LAYOUT, EBC_MULTI), BATCH))
    (store(kjt) * torch.randn(BATCH, EBC_LAYOUT.width, generator=gen)).sum().backward()  # not the init weights

    ebc = store.to_embedding_bag_collection()
    got = ebc(kjt).to_dict()
    with torch.no_grad():
        want = store.split(store(kjt))
    for key in POOLED_KEYS:
        assert_close(got[key], want[key], msg=lambda m, key=key: f"key {key!r}: {m}")

    # the collection holds a copy: training the store further leaves it as it was
    (store(kjt) * torch.randn(BATCH, EBC_LAYOUT.width, generator=gen)).sum().backward()
    again = ebc(kjt).to_dict()
    for key in POOLED_KEYS:
        assert_close(again[key], got[key])


@pytest.mark.parametrize("backend", STORES)
def test_ebc_state_dict_names_and_values(backend):
    store = build_store(EBC_LAYOUT, StoreSettings(backend))
    state = store.ebc_state_dict()
    assert sorted(state) == sorted(f"embedding_bags.{t.name}.weight" for t in EBC_LAYOUT.tables)
    for t in EBC_LAYOUT.tables:
        assert_close(state[f"embedding_bags.{t.name}.weight"], store.table_weights()[t.name])
    ebc = store.to_embedding_bag_collection()
    assert set(ebc.state_dict()) == set(state)


def test_ebc_of_a_table_read_with_sum_and_mean_is_never_silently_wrong(make_kjt):
    """torchrec pools per table; a table read by a sum key and a mean key must either give
    each key its own pooling, or be refused with an error naming the table."""
    layout, _ = LAYOUTS["multi_hot"]  # table 'tag' is read by 'tags_sum' and 'tags_mean'
    store = build_store(layout, StoreSettings("reference"))
    kjt = make_kjt(
        {
            "tags_sum": [[1, 2, 3], [4, 4]],
            "genres_mean": [[0, 1], []],
            "tags_mean": [[1, 2], [5]],
            "city": [[2], [3]],
        }
    )
    try:
        ebc = store.to_embedding_bag_collection()
    except ValueError as e:
        assert "'tag'" in str(e)
        return
    got = ebc(kjt).to_dict()
    with torch.no_grad():
        want = store.split(store(kjt))
    for key in layout.keys:
        assert_close(got[key], want[key], msg=lambda m, key=key: f"key {key!r}: {m}")


@pytest.mark.parametrize("src, dst", [("tbe", "reference"), ("reference", "tbe")])
def test_load_ebc_state_dict_round_trip(src, dst, make_kjt, make_bags, specs_of):
    a = build_store(EBC_LAYOUT, StoreSettings(src, EmbeddingOptimizer("sgd", lr=0.5), seed=0))
    gen = torch.Generator().manual_seed(4)
    kjt = make_kjt(make_bags(gen, specs_of(EBC_LAYOUT, EBC_MULTI), BATCH))
    (a(kjt) * torch.randn(BATCH, EBC_LAYOUT.width, generator=gen)).sum().backward()

    b = build_store(EBC_LAYOUT, StoreSettings(dst, seed=1))
    b.load_ebc_state_dict(a.ebc_state_dict())
    for name, w in a.table_weights().items():
        assert_close(b.table_weights()[name], w)
    with torch.no_grad():
        assert_close(b(kjt), a(kjt))

    # and from a torchrec module's own state dict
    c = build_store(EBC_LAYOUT, StoreSettings(dst, seed=2))
    c.load_ebc_state_dict(a.to_embedding_bag_collection().state_dict())
    with torch.no_grad():
        assert_close(c(kjt), a(kjt))


@pytest.mark.parametrize("backend", STORES)
def test_load_ebc_state_dict_errors(backend):
    store = build_store(EBC_LAYOUT, StoreSettings(backend))
    before = store.table_weights()
    state = store.ebc_state_dict()

    missing = {k: v for k, v in state.items() if k != "embedding_bags.genre.weight"}
    with pytest.raises(KeyError, match=r"embedding_bags\.genre\.weight"):
        store.load_ebc_state_dict(missing)

    wrong = dict(state)
    wrong["embedding_bags.tag.weight"] = torch.zeros(6, 4)
    with pytest.raises(ValueError, match=r"embedding_bags\.tag\.weight.*\(6, 4\).*\(6, 8\)"):
        store.load_ebc_state_dict(wrong)

    # a refused state dict loads nothing (no half-loaded store)
    for name, w in store.table_weights().items():
        assert torch.equal(w, before[name]), name
