"""OptEmbed: the straight-through row gate (checked numerically), width sampling, the
searched compact form (pruned rows read as zero, fused path equals reference), bad input."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import recemb.tables.optembed as optembed_module
from recemb.distributed.share import sharing
from recemb.features import FeatureSpec, Schema
from recemb.pruning.masks import binary_step, step_slope, surrogate_step, width_choices
from recemb.storage import EmbeddingOptimizer, StoreSettings
from recemb.tables import OptEmbed, build_embedding, parse_table
from recemb.tables.optembed import OptEmbedArch, OptEmbedEmbedding

SCHEMA = Schema(
    (
        FeatureSpec("user", 10),
        FeatureSpec("item", 12),
        FeatureSpec("hist", 12, "sequence", max_len=3, table="item"),
        FeatureSpec("tags", 6, "multi_hot"),
    )
)
SPECS = {"user": (10, "single", 0), "item": (12, "single", 0), "hist": (12, "sequence", 3), "tags": (6, "multi", 0)}


@pytest.fixture
def batches_of(make_kjt, make_bags):
    """A random batch of `schema` (empty bags and histories included)."""
    kinds = {"single": "single", "multi_hot": "multi", "sequence": "sequence"}

    def make(schema: Schema, batch: int, seed: int = 0):
        specs = {f.name: (f.cardinality, kinds[f.kind], f.max_len) for f in schema.sparse}
        return make_kjt(make_bags(torch.Generator().manual_seed(seed), specs, batch))

    return make


def settings(backend: str = "reference") -> StoreSettings:
    return StoreSettings(backend, EmbeddingOptimizer("adagrad", lr=0.1))


def test_binary_step_gradient_is_the_surrogates_derivative_numerically():
    # points away from the kinks at |x| = 0.4 and 1 and from 0, where the step jumps
    x = torch.tensor([-1.7, -0.9, -0.55, -0.3, -0.05, 0.07, 0.25, 0.39, 0.45, 0.8, 0.99, 1.3], dtype=torch.float64)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xr = x.clone().requires_grad_()
    out = binary_step(xr)
    assert torch.equal(out, (x > 0).double())  # the forward is the hard step
    (out * w).sum().backward()
    h = 1e-6
    numeric = (surrogate_step(x + h) - surrogate_step(x - h)) / (2 * h) * w
    assert_close(xr.grad, numeric, atol=1e-6, rtol=1e-6)
    assert_close(step_slope(torch.tensor([0.0, 0.2, 0.5, 1.5])), torch.tensor([2.0, 1.2, 0.4, 0.0]))


def test_threshold_gradient_through_the_table_matches_finite_differences(make_kjt):
    """d loss / d t from autograd (straight-through) equals the finite difference of the same
    forward with the hard step replaced by its surrogate."""
    schema = Schema((FeatureSpec("a", 6), FeatureSpec("s", 6, "sequence", max_len=2)))
    module = build_embedding(schema, OptEmbed(dim=8, init_std=0.05), settings()).eval()
    with torch.no_grad():
        module.thresholds.copy_(torch.tensor([0.25, 0.2]))
    kjt = make_kjt({"a": [[0], [1], [2], [3]], "s": [[1, 4], [5], [], [0, 2]]})
    gen = torch.Generator().manual_seed(1)
    w1, w2 = torch.randn(4, 1, 8, generator=gen), torch.randn(4, 2, 8, generator=gen)

    def loss() -> torch.Tensor:
        e = module(kjt)
        return (e.pooled * w1).sum() + (e.sequences["s"][0] * w2).sum()

    h = 1e-3
    numeric = torch.zeros(2)
    original = optembed_module.binary_step
    optembed_module.binary_step = surrogate_step
    try:
        with torch.no_grad():
            for i in range(2):
                module.thresholds[i] += h
                up = loss()
                module.thresholds[i] -= 2 * h
                numeric[i] = (up - loss()) / (2 * h)
                module.thresholds[i] += h
    finally:
        optembed_module.binary_step = original
    loss().backward()  # after the differences: the fused optimizer moves rows in backward
    assert numeric.abs().sum() > 0
    assert_close(module.thresholds.grad, numeric, atol=2e-3, rtol=2e-2)


def test_rows_under_the_threshold_read_as_zero_in_the_supernet(make_kjt):
    module = build_embedding(SCHEMA, OptEmbed(dim=8), settings()).eval()
    weights = module.store.table_weights()
    weights["user"][3] = 0.0  # norm 0: pruned by any threshold >= 0
    weights["user"][4] = 1.0  # norm 8: kept
    module.store.load_table_weights(weights)
    with torch.no_grad():
        module.thresholds.fill_(0.5)
        e = module(make_kjt({"user": [[3], [4]], "item": [[0], [1]], "hist": [[], [2]], "tags": [[0, 1], []]}))
    assert torch.all(e.pooled[0, 0] == 0) and torch.all(e.pooled[1, 0] == 1)
    kept = module.kept_rows()
    assert 3 not in kept["user"].tolist() and 4 in kept["user"].tolist()
    assert kept["tags"] is None  # read by a multi-hot bag: never pruned
    assert module.prunable == ["user", "item"]


def test_training_samples_a_width_per_sample_and_table(batches_of):
    module = build_embedding(SCHEMA, OptEmbed(dim=16), settings()).train()
    module.thresholds.data.fill_(-1.0)  # keep every row, to see the widths alone
    kjt = batches_of(SCHEMA, 64)
    e = module(kjt)  # grad enabled: sampled
    nonzero = (e.pooled[:, :2] != 0).sum(-1)  # [B, 2]: user's and item's kept widths
    assert set(nonzero.flatten().tolist()) <= set(width_choices(16))
    assert len(set(nonzero[:, 0].tolist())) > 1, "widths vary across samples"
    assert not torch.equal(nonzero[:, 0], nonzero[:, 1]), "and across tables"
    with torch.no_grad():
        assert torch.all((module(kjt).pooled[:, :2] != 0).sum(-1) == 16)  # evaluation: every column
    module.search_widths = torch.tensor([4, 8, 12])
    with torch.no_grad():
        widths = (module(kjt).pooled != 0).sum(-1)
    assert torch.all(widths[:, 0] == 4) and torch.all(widths[:, 1] == 8)
    assert set(widths[:, 2].tolist()) == {0, 12}  # tags: 12 wide, or an empty bag


def test_width_draws_are_made_for_the_global_batch_and_sliced_by_the_share(batches_of, make_kjt):
    """Under recemb.distributed.share.sharing(i, 2), a module training on half of a batch
    draws the widths one process draws for that half of the whole batch, step after step."""
    whole = build_embedding(SCHEMA, OptEmbed(dim=16, seed=5), settings()).train()
    halves = [build_embedding(SCHEMA, OptEmbed(dim=16, seed=5), settings()).train() for _ in range(2)]
    for m in (whole, *halves):
        m.thresholds.data.fill_(-1.0)  # keep every row: the nonzero columns are the widths
    for step in range(3):
        kjt = batches_of(SCHEMA, 32, seed=step)
        expected = (whole(kjt).pooled[:, :2] != 0).sum(-1)  # [32, 2]: user's and item's widths
        for i, module in enumerate(halves):
            part = make_kjt(sample_ids(kjt, range(16 * i, 16 * (i + 1))))
            with sharing(i, 2):
                got = (module(part).pooled[:, :2] != 0).sum(-1)
            assert torch.equal(got, expected[16 * i : 16 * (i + 1)]), (step, i)
    assert int(whole._steps) == int(halves[0]._steps) == 3


def sample_ids(kjt, rows: range) -> dict[str, list[list[int]]]:
    """{key: ids of each sample in `rows`} of `kjt` (make_kjt's input)."""
    out = {}
    keys = kjt.keys()  # a KeyedJaggedTensor is not a dict: iterating it is not iterating its keys
    for key in keys:
        offsets, values = kjt[key].offsets(), kjt[key].values()
        out[key] = [values[offsets[r] : offsets[r + 1]].tolist() for r in rows]
    return out


def test_kept_rows_from_given_norms_equal_those_read_from_the_store():
    module = build_embedding(SCHEMA, OptEmbed(dim=16, threshold_init=0.12), settings())
    weights = module.store.table_weights()
    norms = {t: weights[t].abs().sum(1) for t in module.prunable}
    from_store, given = module.kept_rows(), module.kept_rows(norms)
    assert from_store.keys() == given.keys()
    for t, ids in from_store.items():
        assert (ids is None and given[t] is None) or torch.equal(ids, given[t]), t
    assert 0 < from_store["user"].numel() < 10, "the threshold splits the rows"
    with pytest.raises(KeyError, match=r"norms lacks the prunable tables \['item'\]"):
        module.kept_rows({"user": norms["user"]})


ARCH = OptEmbedArch(
    {"user": torch.tensor([0, 2, 5]), "item": torch.tensor([1, 3, 4, 7, 11]), "tags": None},
    {"user": 4, "item": 8, "tags": 16},
)


@pytest.mark.parametrize("backend", ["reference", "tbe"])
def test_searched_tables_hold_kept_rows_only_and_pruned_ids_read_zero(backend, make_kjt):
    module = OptEmbedEmbedding(SCHEMA, OptEmbed(dim=16), settings(backend), ARCH)
    layout = module.store.layout
    assert {t.name: (t.rows, t.dim) for t in layout.tables} == {"user": (4, 4), "item": (6, 8), "tags": (6, 16)}
    assert module.serving_bytes() == (3 * 4 + 5 * 8 + 6 * 16) * 4 + (10 + 12) * 4
    with torch.no_grad():
        e = module(make_kjt({"user": [[1], [2]], "item": [[3], [2]], "hist": [[2, 3, 9], [11]], "tags": [[0], []]}))
    assert torch.all(e.pooled[0, 0] == 0) and e.pooled[1, 0, :4].abs().sum() > 0  # user 1 pruned, 2 kept
    assert torch.all(e.pooled[:, 0, 4:] == 0) and torch.all(e.pooled[:, 1, 8:] == 0)  # widths 4 and 8, zero padded
    assert torch.all(e.pooled[1, 1] == 0) and e.pooled[0, 1].abs().sum() > 0  # item 2 pruned, 3 kept
    hist = e.sequences["hist"][0]
    assert torch.all(hist[0, 0] == 0) and hist[0, 1].abs().sum() > 0 and torch.all(hist[0, 2] == 0)  # 2, 9 pruned
    assert hist[1, 0].abs().sum() > 0


def test_searched_fused_path_equals_reference(batches_of):
    tbe = OptEmbedEmbedding(SCHEMA, OptEmbed(dim=16), settings("tbe"), ARCH)
    ref = OptEmbedEmbedding(SCHEMA, OptEmbed(dim=16), settings("reference"), ARCH)
    null = ref.store.table_weights()["user"][3]
    for step in range(3):
        kjt = batches_of(SCHEMA, 8, seed=step)
        w = torch.randn(8, 2, 16, generator=torch.Generator().manual_seed(step))
        for module in (tbe, ref):
            e = module(kjt)
            ((e.pooled[:, :2] * w).sum() + e.sequences["hist"][0].sum()).backward()
    for name, weight in ref.store.table_weights().items():
        assert_close(tbe.store.table_weights()[name], weight)
    assert torch.equal(ref.store.table_weights()["user"][3], null), "the null row that pruned ids read never moves"


def test_load_initial_takes_kept_rows_and_first_columns():
    supernet = build_embedding(SCHEMA, OptEmbed(dim=16), settings())
    initial = supernet.store.table_weights()
    module = OptEmbedEmbedding(SCHEMA, OptEmbed(dim=16), settings(), ARCH)
    module.load_initial(initial)
    weights = module.store.table_weights()
    assert_close(weights["user"][:3], initial["user"][[0, 2, 5], :4])
    assert_close(weights["item"][:5], initial["item"][[1, 3, 4, 7, 11], :8])
    assert_close(weights["tags"], initial["tags"])


@pytest.mark.parametrize(
    "text, match",
    [
        ("optembed:dim=10", r"OptEmbed\.dim must be a multiple of 4 .*got 10"),
        ("optembed:budget=100,budget_ratio=0.5", r"give budget \(100\) or budget_ratio \(0\.5\), not both"),
        ("optembed:threshold_lr=0", r"OptEmbed\.threshold_lr must be > 0"),
        ("optembed:generations=0", r"OptEmbed\.generations must be >= 1"),
    ],
)
def test_bad_settings_are_refused(text, match):
    with pytest.raises(ValueError, match=match):
        parse_table(text)


def test_bad_architectures_are_refused():
    with pytest.raises(ValueError, match=r"widths\['user'\]=6 must be a multiple of 4"):
        OptEmbedEmbedding(SCHEMA, OptEmbed(dim=16), settings(), OptEmbedArch({}, {"user": 6, "item": 8, "tags": 4}))
    with pytest.raises(ValueError, match="prunes table 'tags', which a multi-hot feature reads"):
        OptEmbedEmbedding(
            SCHEMA,
            OptEmbed(dim=16),
            settings(),
            OptEmbedArch({"tags": torch.tensor([1])}, {"user": 4, "item": 4, "tags": 4}),
        )
    with pytest.raises(ValueError, match=r"export needs the searched tables"):
        build_embedding(SCHEMA, OptEmbed(dim=16), settings()).export_tables()
