"""The contract every table kind keeps, parametrized over the registry: a kind listed in
`recemb.tables.KINDS` is tested here the moment it is listed, with its default config.

Shapes, gradients into the fused store, the TBE path equal to the reference path, state
round trip, memory report, refusal of bad input; and parsing of "kind:key=value" strings.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.testing import assert_close
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.config import from_mapping, to_mapping
from recemb.features import FeatureSpec, Schema
from recemb.storage import STORES, EmbeddingOptimizer, StoreSettings
from recemb.tables import KINDS, Full, build_embedding, parse_table, table_from_mapping
from recemb.tables.base import VIEWS, Embedded

BATCH = 5
SCHEMA = Schema(
    (
        FeatureSpec("user", 10),
        FeatureSpec("item", 20),
        FeatureSpec("tags", 7, "multi_hot", pooling="mean"),
        FeatureSpec("hist", 20, "sequence", max_len=4, table="item"),  # shares the item table
        FeatureSpec("genres", 5, "multi_hot"),
        FeatureSpec("clicked_genres", 5, "sequence", max_len=3, table="genres"),
        FeatureSpec("city", 6, pooling="mean"),
    ),
    dense=("age",),
)
POOLED = [f.name for f in SCHEMA.pooled]
SEQUENCES = {f.name: f.max_len for f in SCHEMA.sequences}
KIND_NAMES = sorted(KINDS)


def schema_specs(schema: Schema) -> dict[str, tuple[int, str, int]]:
    kinds = {"single": "single", "multi_hot": "multi", "sequence": "sequence"}
    return {f.name: (f.cardinality, kinds[f.kind], f.max_len) for f in schema.sparse}


@pytest.fixture
def batches(make_kjt, make_bags):
    """n random batches of the schema (in-range ids; empty bags; empty and full histories)."""

    def make(n: int, seed: int = 0, dtype: torch.dtype = torch.int64):
        gen = torch.Generator().manual_seed(seed)
        return [make_kjt(make_bags(gen, schema_specs(SCHEMA), BATCH), dtype) for _ in range(n)]

    return make


def build(kind: str, backend: str = "tbe", opt: str = "rowwise_adagrad", seed: int = 0, lr: float = 0.1):
    torch.manual_seed(seed)  # dense parameters of a kind (projections, masks) start the same
    settings = StoreSettings(backend, EmbeddingOptimizer(opt, lr=lr), seed=seed)
    return build_embedding(SCHEMA, KINDS[kind](), settings)


def flat(e: Embedded) -> torch.Tensor:
    """Every vector of an Embedded in one [B, -1] tensor, to compare two outputs."""
    parts = [e.pooled.flatten(1)] + [e.sequences[k][0].flatten(1) for k in sorted(e.sequences)]
    return torch.cat(parts, dim=1)


def loss_of(e: Embedded, gen: torch.Generator) -> torch.Tensor:
    out = flat(e)
    return (out * torch.randn(out.shape, generator=gen)).sum()


def train(module, kjts, seed: int, trainable) -> None:
    """Forward + backward per batch; the store updates itself, a torch SGD the rest."""
    gen = torch.Generator().manual_seed(seed)
    dense = trainable(module)
    opt = torch.optim.SGD(dense, lr=0.1) if dense else None
    for kjt in kjts:
        loss_of(module(kjt), gen).backward()
        if opt:
            opt.step()
            opt.zero_grad()


def dense_state(module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if not k.startswith("store.")}


# -- shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", STORES)
@pytest.mark.parametrize("kind", KIND_NAMES)
def test_output_shapes(kind, backend, batches, make_kjt):
    module = build(kind, backend)
    kjt = batches(1)[0]
    emb = module(kjt)
    d = module.dim
    assert isinstance(emb, Embedded)
    assert emb.pooled.shape == (BATCH, len(POOLED), d)
    assert emb.pooled.dtype == torch.float32
    assert set(emb.sequences) == set(SEQUENCES)
    lengths = kjt.lengths().view(len(SCHEMA.names), BATCH)
    for name, max_len in SEQUENCES.items():
        padded, mask = emb.sequences[name]
        assert padded.shape == (BATCH, max_len, d)
        assert mask.shape == (BATCH, max_len) and mask.dtype == torch.bool
        n = lengths[SCHEMA.names.index(name)]
        assert torch.equal(mask, torch.arange(max_len).unsqueeze(0) < n.unsqueeze(1))
        assert torch.all(padded[~mask] == 0), f"{name}: padding must be zero"
        assert mask[0].sum() == 0 and mask[1].all()  # an empty and a full history were covered
    for view in VIEWS:  # every kind answers every view with the same shapes
        other = module(kjt, view=view)
        assert other.pooled.shape == emb.pooled.shape
        assert {k: v[0].shape for k, v in other.sequences.items()} == {k: v[0].shape for k, v in emb.sequences.items()}


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_unknown_view_is_refused(kind, batches):
    with pytest.raises(ValueError, match="view must be one of .*got 'value'"):
        build(kind)(batches(1)[0], view="value")


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_only_sequence_or_only_pooled_schemas(kind, make_kjt):
    pooled_only = Schema((FeatureSpec("a", 4), FeatureSpec("b", 3, "multi_hot")))
    module = build_embedding(pooled_only, KINDS[kind](), StoreSettings("reference"))
    emb = module(make_kjt({"a": [[1], [3]], "b": [[0, 2], []]}))
    assert emb.pooled.shape == (2, 2, module.dim) and emb.sequences == {}

    sequence_only = Schema((FeatureSpec("s", 6, "sequence", max_len=2),))
    module = build_embedding(sequence_only, KINDS[kind](), StoreSettings("reference"))
    emb = module(make_kjt({"s": [[1, 5], [2]]}))
    assert emb.pooled.shape == (2, 0, module.dim)
    padded, mask = emb.sequences["s"]
    assert padded.shape == (2, 2, module.dim)
    assert mask.tolist() == [[True, True], [True, False]]


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_int32_ids_equal_int64_ids(kind, batches):
    module = build(kind)
    with torch.no_grad():
        a = module(batches(1, dtype=torch.int64)[0])
        b = module(batches(1, dtype=torch.int32)[0])
    assert_close(flat(a), flat(b))


# -- training ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", STORES)
@pytest.mark.parametrize("kind", KIND_NAMES)
def test_gradients_reach_the_store(kind, backend, batches, trainable):
    module = build(kind, backend)
    assert module.fused_parameters(), "a kind's store weights are trained by its fused optimizer"
    kjt = batches(1)[0]
    before = module.store.table_weights()
    with torch.no_grad():
        module(kjt)
    for name, w in module.store.table_weights().items():  # a forward alone changes nothing
        assert torch.equal(w, before[name])

    loss_of(module(kjt), torch.Generator().manual_seed(0)).backward()
    after = module.store.table_weights()
    changed = [n for n, w in after.items() if not torch.equal(w, before[n])]
    assert changed, "backward must update the store's tables"
    assert all(torch.isfinite(w).all() for w in after.values())
    for p in trainable(module):  # dense parameters of a kind, if any, get gradients too
        assert p.grad is not None and torch.isfinite(p.grad).all()
    for p in module.fused_parameters():
        assert p.grad is None or not p.grad.any(), "fused parameters must not keep grads for a torch optimizer"


@pytest.mark.parametrize("opt", ["adagrad", "rowwise_adagrad"])  # sgd is covered by tests/storage
@pytest.mark.parametrize("kind", KIND_NAMES)
def test_tbe_path_equals_reference_path(kind, opt, batches, trainable):
    tbe, ref = build(kind, "tbe", opt), build(kind, "reference", opt)
    kjts = batches(4, seed=1)
    with torch.no_grad():
        assert_close(flat(tbe(kjts[0])), flat(ref(kjts[0])))
    train(tbe, kjts[:3], seed=2, trainable=trainable)
    train(ref, kjts[:3], seed=2, trainable=trainable)
    with torch.no_grad():
        assert_close(flat(tbe(kjts[3])), flat(ref(kjts[3])))
    for name, w in ref.store.table_weights().items():
        assert_close(tbe.store.table_weights()[name], w, msg=lambda m, name=name: f"table {name!r}: {m}")
    for name, states in ref.store.optimizer_states().items():
        for a, b in zip(tbe.store.optimizer_states()[name], states):
            assert_close(a, b)


@pytest.mark.parametrize("src, dst", [("tbe", "reference"), ("reference", "tbe")])
@pytest.mark.parametrize("kind", KIND_NAMES)
def test_state_round_trip(kind, src, dst, batches, trainable):
    a = build(kind, src, "adagrad", seed=0)
    kjts = batches(4, seed=3)
    train(a, kjts[:2], seed=4, trainable=trainable)
    b = build(kind, dst, "adagrad", seed=1)
    with torch.no_grad():
        assert not torch.equal(flat(a(kjts[2])), flat(b(kjts[2])))  # the load below matters
    b.load_state_dict(dense_state(a), strict=False)
    b.store.load_store_state(a.store.store_state())
    with torch.no_grad():
        assert_close(flat(b(kjts[2])), flat(a(kjts[2])))
    # and training goes on identically from the loaded optimizer state
    train(a, kjts[2:3], seed=5, trainable=trainable)
    train(b, kjts[2:3], seed=5, trainable=trainable)
    with torch.no_grad():
        assert_close(flat(b(kjts[3])), flat(a(kjts[3])))


# -- memory ------------------------------------------------------------------------------


@pytest.mark.parametrize("opt", ["sgd", "adagrad"])
@pytest.mark.parametrize("kind", KIND_NAMES)
def test_memory_report(kind, opt, trainable):
    module = build(kind, "tbe", opt)
    layout = module.store.layout
    report = module.memory()
    dense = sum(p.numel() for p in trainable(module))
    state = sum(EmbeddingOptimizer(opt).state_params(t.rows, t.dim) for t in layout.tables)
    assert report.params == layout.params() + dense
    assert report.bytes == 4 * report.params
    assert report.optimizer_bytes == 4 * state + 8 * dense
    assert report.total_bytes == report.bytes + report.optimizer_bytes
    held = sum(s.numel() for states in module.store.optimizer_states().values() for s in states)
    assert held == state


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_bad_input_is_refused(kind, make_kjt, batches):
    module = build(kind, "reference")
    bags = {k: [ids.tolist() for ids in jt.to_dense()] for k, jt in batches(1)[0].to_dict().items()}

    missing = {k: v for k, v in bags.items() if k != "tags"}
    with pytest.raises(KeyError, match=r"missing \['tags'\]"):
        module(make_kjt(missing))
    with pytest.raises(KeyError, match=r"unknown \['zip'\]"):
        module(make_kjt({**bags, "zip": [[0]] * BATCH}))
    reordered = dict(reversed(list(bags.items())))
    with pytest.raises(KeyError, match="schema order"):
        module(make_kjt(reordered))
    with pytest.raises(TypeError, match="float32"):
        module(make_kjt(bags, torch.float32))
    empty = KeyedJaggedTensor.from_lengths_sync(
        list(SCHEMA.names), torch.tensor([], dtype=torch.int64), torch.tensor([], dtype=torch.int64)
    )
    with pytest.raises(ValueError, match="empty batch"):
        module(empty)
    too_long = {**bags, "hist": [[1, 2, 3, 4, 5]] + bags["hist"][1:]}
    with pytest.raises(ValueError, match=r"hist.*max_len=4"):  # the store may name its own key for hist
        module(make_kjt(too_long))


# -- configs and parsing -----------------------------------------------------------------


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_registry_config_is_consistent(kind):
    cfg = KINDS[kind]()
    assert cfg.kind == kind
    assert parse_table(kind) == cfg
    assert from_mapping(KINDS[kind], to_mapping(cfg)) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cfg, dataclasses.fields(cfg)[0].name, None)
    module = build_embedding(SCHEMA, cfg, StoreSettings("reference"))
    assert module.dim == cfg.dim


def test_parse_table():
    assert parse_table("full:dim=8,oov=row") == Full(dim=8, oov="row")
    assert parse_table("full") == Full()
    assert parse_table(" full : dim = 12 , init_std=0.1 ") == Full(dim=12, init_std=0.1)
    assert parse_table("full:dim=1e1") == Full(dim=10)
    assert table_from_mapping({"kind": "full", "dim": "8", "oov": "row"}) == Full(dim=8, oov="row")
    assert table_from_mapping({"dim": 4}) == Full(dim=4)  # kind defaults to full
    with pytest.raises(ValueError, match=r"unknown table kind 'fulll' \(did you mean 'full'\?\)"):
        table_from_mapping({"kind": "fulll"})


@pytest.mark.parametrize(
    "text, error, match",
    [
        ("ful", ValueError, r"unknown table kind 'ful' \(did you mean 'full'\?\); known kinds: \[.*'full'"),
        ("nothing_alike", ValueError, r"unknown table kind 'nothing_alike'; known kinds"),
        ("full:dimm=8", ValueError, r"Full has no setting 'dimm' \(did you mean 'dim'\?\)"),
        ("full:colour=red", ValueError, r"Full has no setting 'colour'; settings: \['dim', 'init_std', 'oov'\]"),
        ("full:dim=abc", ValueError, r"Full\.dim must be int, got 'abc'"),
        ("full:dim=1.5", ValueError, r"Full\.dim must be int, got '1\.5'"),
        ("full:init_std=small", ValueError, r"Full\.init_std must be float, got 'small'"),
        ("full:dim=0", ValueError, r"Full\.dim must be >= 1, got 0"),
        ("full:oov=zero", ValueError, r"Full\.oov must be one of \('error', 'row'\), got 'zero'"),
        ("full:init_std=0", ValueError, r"Full\.init_std must be > 0, got 0\.0"),
        ("full:dim", ValueError, r"setting 'dim' must look like key=value"),
    ],
)
def test_parse_table_errors(text, error, match):
    with pytest.raises(error, match=match):
        parse_table(text)


def test_build_embedding_refuses_a_non_config():
    with pytest.raises(TypeError, match=r"cfg must be a table config .*got dict"):
        build_embedding(SCHEMA, {"kind": "full"})
    with pytest.raises(TypeError, match="got EmbeddingOptimizer"):
        build_embedding(SCHEMA, EmbeddingOptimizer())
