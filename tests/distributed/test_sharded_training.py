"""Sharded training equals unsharded training: every registered kind, under table-wise,
column-wise, row-wise and data-parallel plans, on 2 CPU processes over gloo.

One process group for the module: `run_ranks` starts 2 processes once, every check runs
inside it on both ranks (in the same order: the checks are collectives) and each rank
reports per check "ok" or the error; the tests below read the reports.

The unsharded model is the same kind on the fbgemm TBE store with the same optimizer,
trained in one process on the global batch; the sharded one gets half of it per rank.
Column-wise with row-wise Adagrad is the one combination that differs by design (fbgemm
keeps one row accumulator per column shard), so the plans are compared with Adagrad, and
row-wise Adagrad (the default) with table-wise, row-wise and data-parallel.

Also: DCP checkpoints saved on 2 ranks resume on 2 (another plan) and on 1, and back;
evaluation over ranks; memory per rank; stateful transforms (summed counters, drift
caught, every kind's transform state equal to one process's); per-sample random draws made
for the global batch (recemb.distributed.share); a staged kind's training callbacks
(OptEmbed's thresholds) and the row norms its hand-off reads, summed over shards.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.testing import assert_close

from recemb.data.synthetic import SyntheticConfig, generate
from recemb.distributed.data import predict as predict_sharded
from recemb.distributed.memory import rank_memory
from recemb.distributed.plan import describe_plan, find_store
from recemb.distributed.shard import gather_table_weights, shard_model, table_row_norms
from recemb.distributed.share import batch_share
from recemb.distributed.spawn import run_ranks
from recemb.distributed.state import transform_buffers
from recemb.distributed.trainer import DistributedTrainer
from recemb.models import AutoInt, AutoIntConfig, AutoIntPlusConfig
from recemb.pruning.procedures import ThresholdCallback
from recemb.storage import EmbeddingOptimizer, StoreSettings
from recemb.tables import KINDS, Full, OptEmbed, build_embedding
from recemb.tables.full import FullEmbedding
from recemb.train import TrainConfig, predict

pytestmark = pytest.mark.dist

# C1..C3 single-valued (bag tables), M1 mean-pooled bags, S1 a history sharing C3's table
# (so C3 sits in an EmbeddingCollection, read pooled by C3 and as a sequence by S1)
DATA = generate(SyntheticConfig(rows=400, cardinalities=(10, 50, 300), multi_hot_cardinality=20, sequence_max_len=4))
BATCH = 32  # global; 16 per rank
STEPS = 3
MODEL = AutoIntConfig(layers=1, heads=2, attention_dim=16)
TRAIN = TrainConfig(lr=1e-3)
TOL = {"atol": 1e-5, "rtol": 1e-4}
DENSE_TOL = {"atol": 1e-4, "rtol": 1e-3}  # Adam normalises gradients: tiny differences grow a little

KIND_NAMES = sorted(KINDS)
PLANS = ("table_wise", "column_wise", "row_wise", "data_parallel")
EQUIVALENCE = [(k, p, "adagrad") for k in KIND_NAMES for p in PLANS] + [
    (k, p, "rowwise_adagrad") for k in KIND_NAMES for p in ("table_wise", "row_wise", "data_parallel")
]


# -- models ------------------------------------------------------------------------------------
def build(kind: str, backend: str, opt: str, table=None, model: AutoIntConfig = MODEL):
    """The kind on `backend` (torchrec: deferred, to shard) with dense weights from seed 0."""
    # eps well above the gradients' rounding noise: Adagrad divides a gradient by its own size, so
    # a sum that cancels to ~1e-9 would give updates of any size with the default eps
    optimizer = EmbeddingOptimizer(opt, lr=0.1, eps=1e-3)
    settings = StoreSettings(backend, optimizer, device="meta" if backend == "torchrec" else "cpu")
    torch.manual_seed(0)
    embedding = table(settings) if table else build_embedding(DATA.schema, KINDS[kind](), settings)
    torch.manual_seed(0)
    return AutoInt(embedding, model)


def dense_state(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if ".store." not in k}


def sharded_twin(ref, kind: str, opt: str, plan: str, pg=None, table=None):
    """A sharded copy of `ref` (same tables by seed, same dense weights)."""
    model = build(kind, "torchrec", opt, table, ref.cfg)
    model.load_state_dict(dense_state(ref), strict=False)
    return shard_model(model, plan, BATCH // dist.get_world_size(pg), pg)


def global_rows(step: int) -> torch.Tensor:
    return torch.arange(step * BATCH, (step + 1) * BATCH) % len(DATA)  # every dataset here has len(DATA) rows


def local_rows(step: int, rank: int, world: int) -> torch.Tensor:
    rows = global_rows(step)
    per = BATCH // world
    return rows[rank * per : (rank + 1) * per]


def reference_step(ref, optimizer, step: int, rank: int, world: int, data=DATA) -> float:
    """One single-process step on the global batch; returns the loss on this rank's part."""
    batch = data.batch(global_rows(step))
    logits = ref(batch.sparse, batch.dense)
    per = BATCH // world
    part = slice(rank * per, (rank + 1) * per)
    local = F.binary_cross_entropy_with_logits(logits[part], batch.labels[part]).item()
    loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return local


def train_and_compare(ref, trainer: DistributedTrainer, steps: int, rank: int, world: int, data=DATA) -> None:
    """`steps` steps of both; the losses (so the forwards) and then the weights must agree.
    Both sides of a step, on every rank, start from the same torch seed (as the ranks of a
    sharded run and one process do when seeded alike), so models that draw (dropout) draw alike.
    Every rank reaches every collective and asserts on values all ranks share, so a
    difference fails the check on every rank alike and the next check starts in step."""
    ref_opt = torch.optim.Adam(ref.dense_parameters(), lr=TRAIN.lr)
    worst = torch.zeros(())
    for step in range(steps):
        torch.manual_seed(1000 + step)
        expected = reference_step(ref, ref_opt, step, rank, world, data)
        torch.manual_seed(1000 + step)
        got = trainer.train_step(data.batch(local_rows(step, rank, world)))
        worst = torch.maximum(worst, torch.tensor(abs(got - expected)))
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    assert worst < 1e-5, f"a sharded loss differs from the unsharded one by {float(worst)}"
    assert_same_weights(trainer.model, ref)
    assert_same_transform_state(trainer.model, ref)


def assert_same_weights(dmp, ref, pg=None) -> None:
    tables = gather_table_weights(dmp, pg)
    for name, w in ref.embedding.store.table_weights().items():
        assert_close(tables[name], w, **TOL, msg=lambda m, name=name: f"table {name}: {m}")
    mine = dmp.state_dict()
    for k, v in dense_state(ref).items():
        assert_close(mine[k], v, **DENSE_TOL, msg=lambda m, k=k: f"dense {k}: {m}")


def assert_same_transform_state(dmp, ref) -> None:
    """Every persistent buffer outside the stores (a kind's transform state: OptEmbed's draw
    counter, DNIS's mask, summed counters) equals one process's."""
    mine = {name: owner._buffers[buf] for name, owner, buf in transform_buffers(dmp.module)}
    theirs = {name: owner._buffers[buf] for name, owner, buf in transform_buffers(ref)}
    assert mine.keys() == theirs.keys(), (sorted(mine), sorted(theirs))
    for name, value in theirs.items():
        assert torch.equal(mine[name], value), f"transform state {name}: {mine[name]} != {value}"


# -- checks (run on every rank) --------------------------------------------------------------------
def check_plan(dmp, plan: str, world: int) -> None:
    """The plan forces what was asked: every table's type; row-wise spreads rows over every
    rank; column-wise splits the columns of tables at least 8 wide over ranks."""
    store = find_store(dmp.module)
    for t in describe_plan(dmp.plan, store):
        in_bags = store.collection_of(t["table"]) == "bags"
        expected = "table_wise" if plan == "data_parallel" and not in_bags else plan
        assert t["sharding_type"] == expected, t
        ranks = {s["rank"] for s in t["shards"]}
        if plan == "row_wise":
            assert ranks == set(range(world)), t
        if plan == "column_wise" and store.layout.table(t["table"]).dim >= 8:
            assert len(t["shards"]) > 1 and len(ranks) > 1, t


def check_equivalence(rank: int, world: int, kind: str, plan: str, opt: str) -> None:
    ref = build(kind, "tbe", opt)
    dmp = sharded_twin(ref, kind, opt, plan)
    check_plan(dmp, plan, world)
    train_and_compare(ref, DistributedTrainer(dmp, TRAIN), STEPS, rank, world)


def check_predict_and_memory(rank: int, world: int) -> None:
    """Evaluation over ranks (7 rows in batches of 5: padded) equals one process's; per-rank
    memory adds up to the whole tables under a table-wise plan."""
    ref = build("full", "tbe", "adagrad")
    dmp = sharded_twin(ref, "full", "adagrad", "table_wise")
    part = DATA.take(torch.arange(7))
    assert_close(torch.from_numpy(predict_sharded(dmp, part, 5)), torch.from_numpy(predict(ref, part, 5)), **TOL)
    trainer = DistributedTrainer(dmp, TRAIN)
    trainer.train_step(DATA.batch(local_rows(0, rank, world)))
    ranks = rank_memory(dmp, trainer.optimizer)
    assert [r["rank"] for r in ranks] == list(range(world))
    assert sum(r["table_bytes"] for r in ranks) == ref.embedding.store.memory().bytes
    assert sum(r["table_optimizer_bytes"] for r in ranks) == ref.embedding.store.memory().optimizer_bytes
    assert len({r["dense_bytes"] for r in ranks}) == 1  # replicated


def check_checkpoints(rank: int, world: int, root: str) -> None:
    """Save on 2 ranks, resume on 2 (another plan) and on 1; save on 1, resume on 2: training
    continues to the weights of the uninterrupted run, optimizer state included."""
    kind, opt = "unified", "rowwise_adagrad"  # one table read by every key; a stateful optimizer
    on_two, on_one = Path(root) / "on_two", Path(root) / "on_one"
    ref = build(kind, "tbe", opt)
    run = DistributedTrainer(sharded_twin(ref, kind, opt, "data_parallel"), TRAIN)  # DP: RowOptimizer state
    for step in range(3):
        run.train_step(DATA.batch(local_rows(step, rank, world)))
    run.save_checkpoint(on_two)
    at_save = gather_table_weights(run.model)
    for step in range(3, 6):
        run.train_step(DATA.batch(local_rows(step, rank, world)))
    after_6 = (gather_table_weights(run.model), {k: v.clone() for k, v in dense_state(run.model).items()})
    for step in range(6, 9):
        run.train_step(DATA.batch(local_rows(step, rank, world)))
    after_9 = (gather_table_weights(run.model), {k: v.clone() for k, v in dense_state(run.model).items()})

    def same(model, expected, pg=None) -> None:
        tables, dense = expected
        got = gather_table_weights(model, pg)
        for name, w in tables.items():
            assert_close(got[name], w, **TOL, msg=lambda m, name=name: f"table {name}: {m}")
        mine = model.state_dict()
        for k, v in dense.items():
            assert_close(mine[k], v, **DENSE_TOL, msg=lambda m, k=k: f"dense {k}: {m}")

    # resume on 2, row-wise this time (DCP reshards weights and optimizer state)
    two = DistributedTrainer(sharded_twin(ref, kind, opt, "row_wise"), TRAIN)
    fresh = gather_table_weights(two.model)
    two.load_checkpoint(on_two)
    loaded = gather_table_weights(two.model)
    for name, w in at_save.items():
        assert not torch.allclose(fresh[name], w), f"table {name}: the saved weights are the initial ones"
        assert_close(loaded[name], w, atol=0, rtol=0, msg=lambda m, name=name: f"loaded table {name}: {m}")
    for step in range(3, 6):
        two.train_step(DATA.batch(local_rows(step, rank, world)))
    same(two.model, after_6)

    # resume on 1 (rank 0 alone, the whole global batch), then save there
    solo = dist.new_group([0])
    if rank == 0:
        one = DistributedTrainer(sharded_twin(ref, kind, opt, "table_wise", pg=solo), TRAIN, pg=solo)
        one.load_checkpoint(on_two)
        for step in range(3, 6):
            one.train_step(DATA.batch(global_rows(step)))
        same(one.model, after_6, solo)
        one.save_checkpoint(on_one)
    dist.barrier()

    # and back to 2
    back = DistributedTrainer(sharded_twin(ref, kind, opt, "table_wise"), TRAIN)
    back.load_checkpoint(on_one)
    for step in range(6, 9):
        back.train_step(DATA.batch(local_rows(step, rank, world)))
    same(back.model, after_9)


def check_fit_resumes_from_its_checkpoint(rank: int, world: int, root: str) -> None:
    """DistributedTrainer.fit with a run directory: 1 epoch, then resumed to 2 (history,
    best weights and optimizer state from the DCP folders), ends where 2 epochs in one go end."""
    train, valid = DATA.take(torch.arange(0, 320)), DATA.take(torch.arange(320, 400))
    cfg = TrainConfig(epochs=2, batch_size=BATCH, lr=TRAIN.lr, patience=5)
    ref = build("hashed", "tbe", "rowwise_adagrad")
    straight = DistributedTrainer(sharded_twin(ref, "hashed", "rowwise_adagrad", "row_wise"), cfg)
    straight.fit(train, valid)
    one_epoch = TrainConfig(epochs=1, batch_size=BATCH, lr=TRAIN.lr, patience=5)
    first = DistributedTrainer(
        sharded_twin(ref, "hashed", "rowwise_adagrad", "row_wise"), one_epoch, Path(root) / "fit"
    )
    first.fit(train, valid)
    resumed = DistributedTrainer(sharded_twin(ref, "hashed", "rowwise_adagrad", "table_wise"), cfg, Path(root) / "fit")
    assert resumed.try_resume() and len(resumed.history.epochs) == 1
    history = resumed.fit(train, valid)
    assert [e["epoch"] for e in history.epochs] == [1, 2]
    for a, b in zip(history.epochs, straight.history.epochs):
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-4 for k in a), (a, b)
    assert history.best_epoch == straight.history.best_epoch
    expected = (gather_table_weights(straight.model), dense_state(straight.model))
    got = gather_table_weights(resumed.model)
    for name, w in expected[0].items():
        assert_close(got[name], w, **TOL, msg=lambda m, name=name: f"table {name}: {m}")
    mine = resumed.model.state_dict()
    for k, v in expected[1].items():
        assert_close(mine[k], v, **DENSE_TOL, msg=lambda m, k=k: f"dense {k}: {m}")


class CountingFull(FullEmbedding):
    """A stateful transform for the test: an id seen fewer than 2 times before this batch
    reads the OOV row (frequency pruning); `counts` is the state, summed over ranks unless
    `declared` is False."""

    def __init__(self, schema, settings, declared: bool = True) -> None:
        super().__init__(schema, Full(dim=16, oov="row"), settings)
        if declared:
            self.summed_state = ("counts",)
        self.offsets = [0]
        for f in schema.sparse[:-1]:
            self.offsets.append(self.offsets[-1] + f.cardinality)
        self.register_buffer("counts", torch.zeros(sum(f.cardinality for f in schema.sparse), dtype=torch.int64))

    def embed(self, kjt):
        values = kjt.values()
        index = values + torch.repeat_interleave(torch.tensor(self.offsets), torch.tensor(kjt.length_per_key()))
        rare = self.counts[index] < 2  # the state as it stood before this batch
        if self.training:
            self.counts.index_add_(0, index, torch.ones_like(index))
        values = torch.where(rare, -1, values)  # -1 reads the OOV row
        return super().embed(type(kjt)(keys=kjt.keys(), values=values, lengths=kjt.lengths(), stride=kjt.stride()))


class DroppingFull(FullEmbedding):
    """Per-sample random draws for the test: in training each sample's ids read the OOV row
    with probability 1/2, drawn (seeded by the step) for the global batch, this rank's rows
    kept (recemb.distributed.share.batch_share), as a kind must draw to shard exactly."""

    def __init__(self, schema, settings) -> None:
        super().__init__(schema, Full(dim=16, oov="row"), settings)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))  # replicated: every rank steps alike

    def embed(self, kjt):
        if self.training:
            index, count = batch_share()
            batch = kjt.stride()
            gen = torch.Generator().manual_seed(int(self.steps))
            drop = torch.rand(batch * count, generator=gen)[index * batch : (index + 1) * batch] < 0.5
            self.steps += 1
            sample = torch.arange(batch).repeat(len(kjt.keys()))  # single-valued: one id per (key, sample)
            values = torch.where(drop[sample], -1, kjt.values())
            kjt = type(kjt)(keys=kjt.keys(), values=values, lengths=kjt.lengths(), stride=kjt.stride())
        return super().embed(kjt)


SINGLE = generate(SyntheticConfig(rows=len(DATA), cardinalities=(10, 50, 300), multi_hot=0, sequences=0))


def check_transform_state(rank: int, world: int) -> None:
    """A kind's counters, summed over ranks after each step, equal one process's on the
    global batch, on every rank; so do the weights that its transform chose."""
    table = lambda settings: CountingFull(DATA.schema, settings)
    ref = build("full", "tbe", "adagrad", table)
    dmp = sharded_twin(ref, "full", "adagrad", "row_wise", table=table)
    train_and_compare(ref, DistributedTrainer(dmp, TRAIN), 4, rank, world)
    assert torch.equal(dmp.module.embedding.counts, ref.embedding.counts)
    ids = sum(int(DATA.batch(global_rows(step)).sparse.lengths().sum()) for step in range(4))
    assert int(ref.embedding.counts.sum()) == ids  # every id of every global batch, once


def check_undeclared_state_is_caught(rank: int, world: int) -> None:
    """The same counters, undeclared: the ranks' copies differ after the first step, and
    training stops on every rank, naming the buffer."""
    table = lambda settings: CountingFull(DATA.schema, settings, declared=False)
    dmp = sharded_twin(build("full", "tbe", "adagrad", table), "full", "adagrad", "table_wise", table=table)
    trainer = DistributedTrainer(dmp, TRAIN)
    try:
        trainer.train_step(DATA.batch(local_rows(0, rank, world)))
    except RuntimeError as e:
        assert "embedding.counts" in str(e) and "summed_state" in str(e), e
    else:
        raise AssertionError("diverging state was not caught")


def check_per_sample_draws(rank: int, world: int) -> None:
    """Random draws per sample, made for the global batch and sliced by batch_share: the
    sharded run draws what one process draws, and trains to the same weights."""
    table = lambda settings: DroppingFull(SINGLE.schema, settings)
    ref = build("full", "tbe", "adagrad", table)
    dmp = sharded_twin(ref, "full", "adagrad", "row_wise", table=table)
    train_and_compare(ref, DistributedTrainer(dmp, TRAIN), 3, rank, world, SINGLE)


def check_dropout_masks(rank: int, world: int) -> None:
    """AutoInt+ with dropout 0.5 in its DNN: each rank keeps its rows of the global batch's
    mask (BatchDropout), so the sharded run trains as one process does."""
    model = AutoIntPlusConfig(layers=1, heads=2, attention_dim=16, dnn_hidden=(32,), dropout=0.5)
    ref = build("full", "tbe", "adagrad", model=model)
    dmp = sharded_twin(ref, "full", "adagrad", "table_wise")
    train_and_compare(ref, DistributedTrainer(dmp, TRAIN), 3, rank, world)


def check_stage_callbacks(rank: int, world: int) -> None:
    """OptEmbed's supernet stage sharded column-wise: the ThresholdCallback (penalty on every
    rank's loss, its own Adam, kept out of the dense Adam) trains thresholds, tables and dense
    weights to one process's over several steps; the kept rows, read from row norms summed
    over the column shards, are one process's, and some rows are pruned, some kept."""
    cfg = OptEmbed(dim=16, threshold_init=0.12, threshold_lr=0.01, penalty=0.5)
    table = lambda settings: build_embedding(DATA.schema, cfg, settings)
    ref = build("optembed", "tbe", "adagrad", table)
    dmp = sharded_twin(ref, "optembed", "adagrad", "column_wise", table=table)
    sharded = dmp.module.embedding
    trainer = DistributedTrainer(dmp, TRAIN, callbacks=[ThresholdCallback(sharded, cfg)])
    adam = {id(p) for g in trainer.dense_optimizer.param_groups for p in g["params"]}
    assert id(sharded.thresholds) not in adam, "the callback's parameter is stepped by the callback only"
    callback = ThresholdCallback(ref.embedding, cfg)
    ref_opt = torch.optim.Adam([p for p in ref.dense_parameters() if p is not ref.embedding.thresholds], lr=TRAIN.lr)
    for step in range(4):
        batch = DATA.batch(global_rows(step))
        loss = F.binary_cross_entropy_with_logits(ref(batch.sparse, batch.dense), batch.labels)
        ref_opt.zero_grad()
        callback.loss(loss).backward()
        ref_opt.step()
        callback.after_step()
        trainer.train_step(DATA.batch(local_rows(step, rank, world)))
    assert not torch.allclose(ref.embedding.thresholds, torch.full_like(ref.embedding.thresholds, 0.12))
    assert_close(sharded.thresholds, ref.embedding.thresholds, **DENSE_TOL)
    assert_same_weights(dmp, ref)
    assert_same_transform_state(dmp, ref)
    expected = ref.embedding.kept_rows()
    got = sharded.kept_rows(table_row_norms(dmp, sharded.prunable))
    assert expected.keys() == got.keys() and sharded.prunable
    for t, ids in expected.items():
        if t not in sharded.prunable:  # read by a multi-hot bag: never pruned
            assert ids is None and got[t] is None, t
            continue
        assert 0 < ids.numel() < sharded.cardinality[t], (t, ids)
        assert torch.equal(got[t], ids), f"table {t}: kept {got[t].tolist()}, one process keeps {ids.tolist()}"


def check_row_norms(rank: int, world: int) -> None:
    """table_row_norms under every plan (whole, row and column shards, data-parallel copies;
    bag and sequence collections) equals the L1 norms of one process's rows."""
    ref = build("full", "tbe", "adagrad")
    expected = {t: w.abs().sum(1) for t, w in ref.embedding.store.table_weights().items()}
    for plan in PLANS:
        dmp = sharded_twin(ref, "full", "adagrad", plan)
        got = table_row_norms(dmp, sorted(expected))
        for t, norms in expected.items():
            assert_close(got[t], norms, **TOL, msg=lambda m, t=t, plan=plan: f"{plan} table {t}: {m}")


def checks(root: str) -> list[tuple[str, object, tuple]]:
    out: list[tuple[str, object, tuple]] = [
        (f"{kind}-{plan}-{opt}", check_equivalence, (kind, plan, opt)) for kind, plan, opt in EQUIVALENCE
    ]
    out.append(("predict_and_memory", check_predict_and_memory, ()))
    out.append(("checkpoints", check_checkpoints, (root,)))
    out.append(("fit_resumes", check_fit_resumes_from_its_checkpoint, (root,)))
    out.append(("transform_state", check_transform_state, ()))
    out.append(("undeclared_state", check_undeclared_state_is_caught, ()))
    out.append(("per_sample_draws", check_per_sample_draws, ()))
    out.append(("dropout_masks", check_dropout_masks, ()))
    out.append(("stage_callbacks", check_stage_callbacks, ()))
    out.append(("row_norms", check_row_norms, ()))
    return out


def worker(rank: int, world: int, root: str) -> dict[str, str]:
    """Every check on this rank; its report: check name -> "ok" or the error. The ranks
    agree on each check's outcome before the next; if they cannot (a rank failed while the
    other waited in a collective, which then timed out), the remaining checks are reported
    as not run."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("torchrec").setLevel(logging.ERROR)
    report, broken = {}, None
    for name, check, args in checks(root):
        if broken:
            report[name] = f"not run: the ranks fell out of step in check {broken}"
            continue
        try:
            check(rank, world, *args)  # type: ignore[operator]
            report[name] = "ok"
        except Exception:  # noqa: BLE001 (reported)
            report[name] = traceback.format_exc()
        try:
            outcomes: list[object] = [None] * world
            dist.all_gather_object(outcomes, report[name] == "ok")
        except Exception:  # noqa: BLE001 (the group is unusable: stop)
            broken = name
    return report


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[dict[str, str]]:
    return run_ranks(worker, 2, str(tmp_path_factory.mktemp("dcp")), collective_timeout=30)


def _assert_ok(reports: list[dict[str, str]], name: str) -> None:
    failures = [f"rank {r}: {rep[name]}" for r, rep in enumerate(reports) if rep[name] != "ok"]
    if any(rep[name].startswith("not run") for rep in reports):
        failures = [f"rank {r}: {rep[name]}" for r, rep in enumerate(reports)]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("kind, plan, opt", EQUIVALENCE)
def test_sharded_equals_unsharded(reports, kind, plan, opt):
    _assert_ok(reports, f"{kind}-{plan}-{opt}")


def test_predict_over_ranks_and_memory_per_rank(reports):
    _assert_ok(reports, "predict_and_memory")


def test_checkpoints_reshard_between_2_and_1_ranks(reports):
    _assert_ok(reports, "checkpoints")


def test_fit_resumes_from_its_run_directory(reports):
    _assert_ok(reports, "fit_resumes")


def test_summed_transform_state_matches_one_process(reports):
    _assert_ok(reports, "transform_state")


def test_undeclared_state_that_drifts_stops_training(reports):
    _assert_ok(reports, "undeclared_state")


def test_per_sample_draws_for_the_global_batch_shard_exactly(reports):
    _assert_ok(reports, "per_sample_draws")


def test_dropout_draws_the_global_batchs_mask(reports):
    _assert_ok(reports, "dropout_masks")


def test_stage_callbacks_train_sharded_as_in_one_process(reports):
    _assert_ok(reports, "stage_callbacks")


def test_row_norms_summed_over_shards_equal_one_process(reports):
    _assert_ok(reports, "row_norms")
