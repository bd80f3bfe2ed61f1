"""`recemb plan`: statistics, a plan within the budget (full for small vocabularies, hashed
for large, widths by frequency), a config that `recemb train --config` runs, bad budgets."""

from __future__ import annotations

import argparse

import pytest
import torch

from recemb.config import load_config_file
from recemb.data.batch import CTRData, Jagged
from recemb.features import FeatureSpec, Schema
from recemb.plan import add_arguments, parse_bytes, plan_tables, run, table_stats
from recemb.run import run_training
from recemb.storage import StoreSettings
from recemb.tables import build_embedding, table_from_mapping


def test_parse_bytes():
    assert parse_bytes("8MB") == 8_000_000
    assert parse_bytes("8MiB") == 8 * 2**20
    assert parse_bytes("1.5kb") == 1500
    assert parse_bytes("4096") == 4096
    with pytest.raises(ValueError, match=r"budget must be a number of bytes with an optional unit .*got '8 parsecs'"):
        parse_bytes("8 parsecs")


def data() -> CTRData:
    gen = torch.Generator().manual_seed(0)
    n = 2000
    skewed = torch.where(torch.rand(n, generator=gen) < 0.9, 0, torch.randint(0, 5000, (n,), generator=gen))
    single = torch.stack(
        [torch.randint(0, 7, (n,), generator=gen), torch.randint(0, 5000, (n,), generator=gen), skewed], 1
    )
    lengths = torch.randint(0, 3, (n,), generator=gen)
    bag = Jagged(
        torch.randint(0, 30, (int(lengths.sum()),), generator=gen),
        torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
    )
    schema = Schema(
        (
            FeatureSpec("small", 7),
            FeatureSpec("flat", 5000),
            FeatureSpec("skewed", 5000),
            FeatureSpec("bag", 30, "multi_hot"),
        )
    )
    return CTRData(schema, single, {"bag": bag}, torch.zeros(n, 0), torch.zeros(n))


def test_statistics():
    stats = {s.name: s for s in table_stats(data())}
    assert stats["small"].cardinality == 7 and stats["small"].seen == 7
    assert stats["skewed"].effective < stats["flat"].effective / 5, "a dominant id makes a table effectively small"
    assert stats["bag"].occurrences == int(data().jagged["bag"].values.numel())


@pytest.mark.parametrize("budget", [20_000, 80_000, 400_000, 2_000_000])
def test_plan_fits_the_budget_and_follows_the_rules(budget):
    plan = plan_tables(table_stats(data()), budget, dim=16)
    tables = {t["table"]: t for t in plan["tables"]}
    assert plan["planned_bytes"] <= budget
    assert tables["small"]["decision"] == "full"
    assert tables["small"]["width"] >= tables["flat"]["width"]
    assert tables["skewed"]["width"] >= tables["flat"]["width"], "widths by frequency"
    if budget <= 80_000:
        assert tables["flat"]["decision"] == "hashed" and tables["flat"]["rows"] < 5000
    if budget >= 2_000_000:
        assert all(t["decision"] == "full" and t["width"] == 16 for t in plan["tables"])
    # the table config it implies builds within the budget
    conf = {
        "kind": "mixed_dim",
        "dim": 16,
        "budget": budget,
        "widths": ";".join(f"{k}={t['width']}" for k, t in tables.items()),
    }
    hashed = ";".join(f"{k}={t['rows']}" for k, t in tables.items() if t["decision"] == "hashed")
    if hashed:
        conf["rows"] = hashed
    module = build_embedding(data().schema, table_from_mapping(conf), StoreSettings("reference"))
    assert module.memory().bytes == plan["planned_bytes"]


def test_a_budget_below_the_smallest_configuration_is_refused():
    with pytest.raises(
        ValueError, match=r"budget=1000 bytes is below the smallest configuration \(one row of width 4 per table"
    ):
        plan_tables(table_stats(data()), 1000, dim=16)


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_cli_writes_a_config_that_trains(tmp_path, suffix):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    spec = "synthetic:rows=1000,cardinalities=20;3000,multi_hot=0,sequences=0"
    out = tmp_path / f"plan{suffix}"
    report = run(parser.parse_args(["--data", spec, "--budget", "20KB", "--dim", "8", "--out", str(out)]))
    assert report["planned_bytes"] <= 20_000 and report["written"] == str(out)
    conf = load_config_file(out)
    assert conf["table"]["kind"] == "mixed_dim" and conf["data"] == spec
    result = run_training(
        {**conf, "model": {"name": "autoint", "layers": 1}, "train": {"epochs": 1, "batch_size": 256}}
    )
    assert result.metrics["table_bytes"] <= 20_000
