"""The torchrec store (what recemb.distributed shards) in one process: it equals the
reference store over training, groups tables into the right torchrec collections, and the
pieces of recemb.distributed that need no process group."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from recemb.data.synthetic import SyntheticConfig, generate
from recemb.distributed.data import global_batch_rows, rank_batches, rank_samples
from recemb.distributed.optim import RowOptimizer
from recemb.distributed.plan import PLANS, constraints
from recemb.distributed.state import TransformState
from recemb.features import FeatureSpec, Schema
from recemb.storage import EmbeddingOptimizer, LookupSpec, StoreLayout, StoreSettings, TableSpec, build_store
from recemb.storage.optim import reference_update
from recemb.tables import KINDS, build_embedding

pytestmark = pytest.mark.dist

# bags of one pooling, a table read pooled and as a sequence, one read with sum and mean
# (both go into an EmbeddingCollection), two widths, a name a ModuleDict cannot hold
LAYOUT = StoreLayout(
    (
        TableSpec("user", 9, 4),
        TableSpec("item", 12, 8),
        TableSpec("tag", 6, 8, init_bound=0.1),
        TableSpec("items", 5, 4),
        TableSpec("city.id", 4, 4, init_std=0.05),
    ),
    (
        LookupSpec("user", "user"),
        LookupSpec("hist", "item", "none", 4),
        LookupSpec("target", "item"),
        LookupSpec("tags_sum", "tag", "sum"),
        LookupSpec("tags_mean", "tag", "mean"),
        LookupSpec("kinds", "items", "mean"),
        LookupSpec("city", "city.id", "mean"),
    ),
)
MULTI = ("tags_sum", "tags_mean", "kinds")


def stores(opt: str):
    optimizer = EmbeddingOptimizer(opt, lr=0.1)
    return [build_store(LAYOUT, StoreSettings(b, optimizer, seed=3)) for b in ("torchrec", "reference")]


@pytest.mark.parametrize("opt", ["sgd", "adagrad", "rowwise_adagrad"])
def test_torchrec_store_equals_reference_over_training(opt, make_kjt, make_bags, specs_of, backward):
    torchrec, reference = stores(opt)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        kjt = make_kjt(make_bags(gen, specs_of(LAYOUT, MULTI), 6))
        out_t, out_r = torchrec(kjt), reference(kjt)
        assert_close(out_t, out_r)
        w = torch.randn(out_t.shape, generator=gen)
        (out_t * w).sum().backward()
        (out_r * w).sum().backward()
    for name, weight in reference.table_weights().items():
        assert_close(torchrec.table_weights()[name], weight, msg=lambda m, name=name: f"table {name}: {m}")
    for name, states in reference.optimizer_states().items():
        for a, b in zip(torchrec.optimizer_states()[name], states):
            assert_close(a, b)


# the contract's schema: a sequence sharing the item table, mean bags, a sequence sharing a bag's table
SCHEMA = Schema(
    (
        FeatureSpec("user", 10),
        FeatureSpec("item", 20),
        FeatureSpec("tags", 7, "multi_hot", pooling="mean"),
        FeatureSpec("hist", 20, "sequence", max_len=4, table="item"),
        FeatureSpec("genres", 5, "multi_hot"),
        FeatureSpec("clicked_genres", 5, "sequence", max_len=3, table="genres"),
        FeatureSpec("city", 6, pooling="mean"),
    ),
    dense=("age",),
)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_on_the_torchrec_store_equals_the_reference(kind, make_kjt, make_bags, trainable):
    """Outputs, and weights and optimizer state after training (the store updating itself,
    a torch SGD the kind's own parameters), as tests/tables/test_contract.py checks TBE."""
    kinds = {"single": "single", "multi_hot": "multi", "sequence": "sequence"}
    specs = {f.name: (f.cardinality, kinds[f.kind], f.max_len) for f in SCHEMA.sparse}
    gen = torch.Generator().manual_seed(1)
    kjts = [make_kjt(make_bags(gen, specs, 5)) for _ in range(4)]
    modules = {}
    for backend in ("torchrec", "reference"):
        torch.manual_seed(0)
        settings = StoreSettings(backend, EmbeddingOptimizer("rowwise_adagrad", lr=0.1))
        module = modules[backend] = build_embedding(SCHEMA, KINDS[kind](), settings)
        opt = torch.optim.SGD(trainable(module), lr=0.1) if trainable(module) else None
        loss_gen = torch.Generator().manual_seed(2)
        for kjt in kjts[:3]:
            out = _flat(module(kjt))
            (out * torch.randn(out.shape, generator=loss_gen)).sum().backward()
            if opt:
                opt.step()
                opt.zero_grad()
    with torch.no_grad():
        assert_close(_flat(modules["torchrec"](kjts[3])), _flat(modules["reference"](kjts[3])))
    got, want = modules["torchrec"].store, modules["reference"].store
    for name, w in want.table_weights().items():
        assert_close(got.table_weights()[name], w, msg=lambda m, name=name: f"table {name}: {m}")
    for name, states in want.optimizer_states().items():
        for a, b in zip(got.optimizer_states()[name], states):
            assert_close(a, b)


def _flat(e) -> torch.Tensor:
    parts = [e.pooled.flatten(1)] + [e.sequences[k][0].flatten(1) for k in sorted(e.sequences)]
    return torch.cat(parts, dim=1)


def test_tables_go_to_the_collection_that_can_serve_them():
    store = stores("sgd")[0]
    assert store.groups == {"bags": ["user", "items", "city.id"], "dim8": ["item", "tag"]}
    assert isinstance(store.collections["bags"], EmbeddingBagCollection)
    assert isinstance(store.collections["dim8"], EmbeddingCollection)
    assert store.torchrec_names["items"] != "items" and "." not in store.torchrec_names["city.id"]
    assert store.torchrec_names["user"] == "user"
    assert [t.name for t, _ in store.iter_initial_weights()] == [t.name for t in LAYOUT.tables]
    for (t, w), (name, expected) in zip(store.iter_initial_weights(), store.initial_weights().items()):
        assert t.name == name and torch.equal(w, expected)
    assert store.fused_params()["learning_rate"] == 0.1


def test_deferred_store_allocates_nothing_and_refuses_local_reads():
    store = build_store(LAYOUT, StoreSettings("torchrec", device="meta"))
    assert all(p.is_meta for p in store.parameters())
    with pytest.raises(RuntimeError, match="deferred"):
        store.table_weights()
    with pytest.raises(ValueError, match="adam"):
        build_store(LAYOUT, StoreSettings("torchrec", EmbeddingOptimizer("adam")))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_forced_plans_constrain_every_table(kind):
    data = generate(SyntheticConfig(rows=50, cardinalities=(10, 50), multi_hot_cardinality=20, sequence_max_len=3))
    embedding = build_embedding(data.schema, KINDS[kind](), StoreSettings("torchrec", device="meta"))
    store = embedding.store
    assert constraints(store, "auto", 2, "cpu") is None
    for plan in PLANS[1:]:
        forced = constraints(store, plan, 2, "cpu")
        assert set(forced) == set(store.torchrec_names.values())
        for t in store.layout.tables:
            (sharding,) = forced[store.torchrec_names[t.name]].sharding_types
            sequence = store.collection_of(t.name) != "bags"
            assert sharding == ("table_wise" if plan == "data_parallel" and sequence else plan)
    with pytest.raises(ValueError, match="plan must be one of"):
        constraints(store, "diagonal", 2, "cpu")
    TransformState(embedding)  # every registered kind is stateless or declares its state


def test_transform_state_sorts_buffers():
    data = generate(SyntheticConfig(rows=50, cardinalities=(10,), multi_hot=0, sequences=0))
    embedding = build_embedding(data.schema, KINDS["full"](), StoreSettings("torchrec", device="meta"))
    embedding.register_buffer("seen", torch.zeros(10))
    embedding.register_buffer("scratch", torch.zeros(10), persistent=False)  # not state
    state = TransformState(embedding)
    assert [q for q, _, _ in state.replicated] == ["seen"] and not state.summed
    type(embedding).summed_state = ("seen",)
    try:
        state = TransformState(embedding)
        assert [q for q, _, _ in state.summed] == ["seen"] and not state.replicated
    finally:
        del type(embedding).summed_state


def test_rank_batches_split_every_global_batch_equally():
    data = generate(SyntheticConfig(rows=23, cardinalities=(10,), multi_hot=0, sequences=0, n_dense=1))
    world, size = 3, 8  # batches of 8, 8, 7: the last loses 1 sample
    parts = [list(rank_batches(data, size, r, world, shuffle=True, seed=5)) for r in range(world)]
    batches = list(global_batch_rows(len(data), size, True, 5))
    assert [len(p) for p in parts] == [3] * world
    for i, rows in enumerate(batches):
        per = len(rows) // world
        ids = torch.cat([parts[r][i].sparse.values() for r in range(world)])
        assert torch.equal(ids, data.single[rows[: per * world], 0])
        assert {len(parts[r][i]) for r in range(world)} == {per}
    assert rank_samples(len(data), size, world) == 8 + 8 + 6
    with pytest.raises(ValueError, match="at least the number of ranks"):
        next(rank_batches(data, 2, 0, world))


@pytest.mark.parametrize("opt", ["sgd", "adagrad", "rowwise_adagrad", "adam"])
def test_row_optimizer_is_the_fused_formula_on_read_rows(opt):
    settings = EmbeddingOptimizer(opt, lr=0.1)
    weight = torch.nn.Parameter(torch.randn(6, 4))
    expected = weight.detach().clone()
    states = [torch.zeros(s) for s in settings.state_shapes(6, 4)]
    optimizer = RowOptimizer([weight], settings, ["t"])
    assert sorted(optimizer.state[weight]) == sorted(
        [f"t.momentum{i + 1}" for i in range(len(states))] + (["step"] if opt == "adam" else [])
    )
    for step in (1, 2):
        grad = torch.zeros(6, 4)
        grad[[1, 4]] = torch.randn(2, 4)
        weight.grad = grad.clone()
        optimizer.step()
        reference_update(settings, expected, grad, torch.tensor([1, 4]), states, step)
        assert_close(weight.detach(), expected)


def test_launch_refuses_a_bad_config_before_starting_processes():
    from recemb.distributed.launch import launch_training

    with pytest.raises(ValueError, match="unknown table kind"):
        launch_training({"table": {"kind": "nope"}}, nproc=2)
    with pytest.raises(ValueError, match="plan must be one of"):
        launch_training({}, nproc=2, plan="diagonal")
    with pytest.raises(ValueError, match="nproc must be >= 1"):
        launch_training({}, nproc=0)
