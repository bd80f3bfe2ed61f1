"""Export round trips: a trained optembed / mixed_dim / dnis model and its export give the same
predictions (fp32: float rounding; int8: within INT8_TOLERANCE), pruned rows read as zero
before and after, bytes are reported, and runs without such a table are refused."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from recemb.export import FP32_TOLERANCE, INT8_TOLERANCE, add_arguments, export_model, export_run, load_export, run
from recemb.features import FeatureSpec, Schema
from recemb.models import build_model, model_config
from recemb.run import run_training
from recemb.storage import EmbeddingOptimizer, StoreSettings
from recemb.tables import Dnis, MixedDim, OptEmbed, build_embedding
from recemb.tables.optembed import OptEmbedArch, OptEmbedEmbedding

SCHEMA = Schema(
    (
        FeatureSpec("user", 30),
        FeatureSpec("item", 40),
        FeatureSpec("hist", 40, "sequence", max_len=3, table="item"),
        FeatureSpec("tags", 9, "multi_hot", pooling="mean"),
        FeatureSpec("city", 7),
    ),
    dense=("age",),
)
SINGLE = Schema((FeatureSpec("a", 25), FeatureSpec("b", 60), FeatureSpec("c", 6)), dense=("x",))
KINDS = {"single": "single", "multi_hot": "multi", "sequence": "sequence"}


def batch(schema: Schema, make_kjt, make_bags, n: int, seed: int):
    specs = {f.name: (f.cardinality, KINDS[f.kind], f.max_len) for f in schema.sparse}
    gen = torch.Generator().manual_seed(seed)
    return (
        make_kjt(make_bags(gen, specs, n)),
        torch.randn(n, len(schema.dense), generator=gen),
        torch.randint(0, 2, (n,), generator=gen).float(),
    )


def arch_for(schema: Schema) -> OptEmbedArch:
    kept, widths = {}, {}
    for i, (t, members) in enumerate(schema.tables().items()):
        n = members[0].cardinality
        bag = any(f.kind == "multi_hot" for f in members)
        kept[t] = None if bag else torch.arange(0, n, 2 + i % 2)  # every 2nd or 3rd row survives
        widths[t] = [4, 8, 12][i % 3]
    return OptEmbedArch(kept, widths)


def trained_model(kind: str, schema: Schema, make_kjt, make_bags):
    settings = StoreSettings("reference", EmbeddingOptimizer("adagrad", lr=0.2))
    torch.manual_seed(0)
    if kind == "optembed":
        embedding = OptEmbedEmbedding(schema, OptEmbed(dim=12), settings, arch_for(schema))
    elif kind == "mixed_dim":
        embedding = build_embedding(schema, MixedDim(dim=12, alpha=0.5, rows=f"{schema.sparse[1].name}=16"), settings)
    else:
        embedding = build_embedding(schema, Dnis(dim=12, groups=3, sparsity=0.5), settings)
    model = build_model(embedding, model_config("autoint", {"layers": 1, "attention_dim": 8}))
    opt = torch.optim.Adam(model.dense_parameters(), lr=0.01)
    for step in range(4):
        kjt, dense, labels = batch(schema, make_kjt, make_bags, 16, step)
        loss = F.binary_cross_entropy_with_logits(model(kjt, dense), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if kind == "dnis":
        with torch.no_grad():
            embedding.selection.uniform_(0.2, 1.0, generator=torch.Generator().manual_seed(3))
        embedding.prune()
    return model.eval()


@pytest.mark.parametrize("schema", [SCHEMA, SINGLE], ids=["mixed-schema", "single-valued"])
@pytest.mark.parametrize("kind", ["optembed", "mixed_dim", "dnis"])
def test_export_predicts_as_the_trained_model(kind, schema, make_kjt, make_bags):
    model = trained_model(kind, schema, make_kjt, make_bags)
    kjt, dense, _ = batch(schema, make_kjt, make_bags, 64, seed=99)
    with torch.no_grad():
        want = torch.sigmoid(model(kjt, dense))
        fp32 = load_export(export_model(model))
        assert_close(torch.sigmoid(fp32(kjt, dense)), want, atol=FP32_TOLERANCE, rtol=0)
        int8 = load_export(export_model(model, int8=True))
        assert (torch.sigmoid(int8(kjt, dense)) - want).abs().max() <= INT8_TOLERANCE
        # the vectors themselves, sequences included
        a, b = model.embedding(kjt), fp32.embedding(kjt)
        assert a.pooled.abs().sum() > 0
        assert_close(b.pooled, a.pooled, atol=1e-6, rtol=1e-5)
        for name, (x, mask) in a.sequences.items():
            assert_close(b.sequences[name][0], x, atol=1e-6, rtol=1e-5)
            assert torch.equal(b.sequences[name][1], mask)


def test_fbgemm_remaps_single_valued_tables_and_torch_the_shared_ones(make_kjt, make_bags):
    single = load_export(export_model(trained_model("optembed", SINGLE, make_kjt, make_bags)))
    shared = load_export(export_model(trained_model("optembed", SCHEMA, make_kjt, make_bags)))
    assert single.embedding.fbgemm_remap and not shared.embedding.fbgemm_remap


def test_pruned_rows_read_zero_before_and_after_export(make_kjt, make_bags):
    model = trained_model("optembed", SCHEMA, make_kjt, make_bags)
    exported = load_export(export_model(model, int8=True))
    # user keeps even ids, item every 3rd: user 1 and item 1 are pruned, user 2 and item 3 kept
    kjt = make_kjt(
        {"user": [[1], [2]], "item": [[1], [3]], "hist": [[1, 3], [2]], "tags": [[0], []], "city": [[1], [0]]}
    )
    with torch.no_grad():
        for e in (model.embedding(kjt), exported.embedding(kjt)):
            assert torch.all(e.pooled[0, :2] == 0) and e.pooled[1, 0].abs().sum() > 0 and e.pooled[1, 1].abs().sum() > 0
            hist = e.sequences["hist"][0]
            assert torch.all(hist[0, 0] == 0) and hist[0, 1].abs().sum() > 0 and torch.all(hist[1, 0] == 0)


def test_export_bytes_and_file(tmp_path, make_kjt, make_bags):
    model = trained_model("optembed", SINGLE, make_kjt, make_bags)
    arch = model.embedding.arch
    record = export_model(model, tmp_path / "m.pt")
    kept = {t: len(ids) for t, ids in arch.kept.items()}
    weights = sum(kept[t] * arch.widths[t] * 4 for t in kept)
    remaps = sum(f.cardinality * 4 for f in SINGLE.sparse)
    assert record["bytes"]["tables"] == weights + remaps == model.embedding.serving_bytes()
    assert record["bytes"]["remaps"] == remaps
    assert record["bytes"]["file"] == (tmp_path / "m.pt").stat().st_size
    int8 = export_model(model, int8=True)
    assert int8["bytes"]["tables"] == sum(kept[t] * (arch.widths[t] + 4) for t in kept) + remaps
    loaded = load_export(tmp_path / "m.pt")
    kjt, dense, _ = batch(SINGLE, make_kjt, make_bags, 8, seed=5)
    with torch.no_grad():
        assert_close(loaded(kjt, dense), model(kjt, dense), atol=1e-5, rtol=1e-5)


def test_a_model_without_a_compact_table_is_refused(make_kjt):
    from recemb.tables import Full

    model = build_model(build_embedding(SINGLE, Full(dim=8), StoreSettings("reference")), model_config("autoint"))
    with pytest.raises(
        ValueError, match=r"table kind 'full' has no compact export: .*\['optembed', 'mixed_dim', 'dnis'\]"
    ):
        export_model(model)


DATA = "synthetic:rows=1200,cardinalities=20;60;300,multi_hot=0,sequences=0,seed=2"
TRAIN = {"epochs": 1, "batch_size": 256}
MODEL = {"name": "autoint", "layers": 1, "attention_dim": 8}


def test_export_of_a_run_from_the_cli(tmp_path):
    table = {
        "kind": "optembed", "dim": 8, "generations": 1, "keep": 2, "mutations": 2, "crossovers": 2,
        "threshold_lr": 0.05, "budget_ratio": 0.5,
    }  # fmt: skip
    result = run_training({"data": DATA, "table": table, "model": MODEL, "train": TRAIN}, out_dir=tmp_path / "run")
    stages = result.metrics["stages"]
    assert set(stages) == {"supernet", "search", "retrain"}
    assert all({"auc", "logloss", "bytes"} <= set(s) for s in stages.values())
    assert stages["search"]["bytes"] == stages["retrain"]["bytes"] <= 0.5 * (20 + 60 + 300) * 8 * 4  # the budget
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["metrics"]["stages"] == json.loads(json.dumps(stages))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    report = run(
        parser.parse_args(["--run", str(tmp_path / "run"), "--out", str(tmp_path / "e.pt"), "--int8", "--check"])
    )
    assert report["dtype"] == "int8" and report["tables_bytes"] > 0 and report["compression"] > 1
    assert report["max_abs_prob_diff"] <= INT8_TOLERANCE
    fp32 = export_run(tmp_path / "run", tmp_path / "f.pt", check=True)
    assert fp32["max_abs_prob_diff"] <= FP32_TOLERANCE
    assert abs(fp32["export_auc"] - result.metrics["auc"]) < 1e-6


def test_export_of_a_run_without_a_compact_table_is_refused(tmp_path):
    run_training({"data": DATA, "table": {"kind": "full", "dim": 8}, "model": MODEL, "train": TRAIN}, out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"trained table kind 'full', which has no pruned, mixed or searched table"):
        export_run(tmp_path, tmp_path / "e.pt")
    with pytest.raises(FileNotFoundError, match="is not a run directory: it has no run.json"):
        export_run(tmp_path / "nothing", tmp_path / "e.pt")
