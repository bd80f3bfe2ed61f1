"""`recemb bench zoo` on a toy zoo: it trains the configs, keeps results.json, and rewrites
only the marked table of README.md, keeping the rows of configs it did not run."""

import argparse
import json

import pytest
import torch

from recemb.bench import zoo

CONFIG = """\
data: "synthetic:rows=800,cardinalities=10;30,n_dense=1,multi_hot=0,sequences=0"
table: {{kind: full, dim: 4}}
model: {{name: {model}}}
train: {{epochs: 1, batch_size: 256, seed: 3}}
"""


def parse(argv):
    parser = argparse.ArgumentParser()
    zoo.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def folder(tmp_path):
    for model in ("deepfm", "wdl"):
        (tmp_path / f"{model}_toy.yaml").write_text(CONFIG.format(model=model))
    (tmp_path / "README.md").write_text(f"# Zoo\n\nintro\n\n{zoo.START}\nold table\n{zoo.END}\n\nfooter\n")
    return tmp_path


def run(argv):
    threads = torch.get_num_threads()
    try:
        return zoo.run(parse(argv))
    finally:
        torch.set_num_threads(threads)


def test_zoo_runs_writes_results_and_the_table(folder, capsys):
    result = run(["--zoo", str(folder)])
    assert set(result["results"]) == {"deepfm_toy", "wdl_toy"} and not result["failed"]
    stored = json.loads((folder / "results.json").read_text())["results"]
    row = stored["deepfm_toy"]
    assert row["seed"] == 3 and row["epochs"] == 1 and row["table_bytes"] == (10 + 30) * 4 * 4
    assert 0 <= row["auc"] <= 1 and row["samples_per_s"] > 0 and "torch" in row["environment"]
    readme = (folder / "README.md").read_text()
    assert "old table" not in readme and readme.count(zoo.START) == 1
    assert readme.startswith("# Zoo\n\nintro") and readme.rstrip().endswith("footer")
    assert "| synthetic | deepfm | [deepfm_toy](deepfm_toy.yaml) |" in readme and "Environment: Python" in readme

    # a filtered run updates its row and keeps the other
    stored["wdl_toy"]["auc"] = 0.123
    (folder / "results.json").write_text(json.dumps({"results": stored}))
    run(["--zoo", str(folder), "--filter", "deepfm_*"])
    readme = (folder / "README.md").read_text()
    assert "| 0.1230 |" in readme and "deepfm_toy" in readme


def test_dry_run_no_match_and_smoke_epochs(folder):
    assert run(["--zoo", str(folder), "--filter", "wdl*", "--dry-run"])["configs"] == ["wdl_toy"]
    with pytest.raises(ValueError, match="no config"):
        run(["--zoo", str(folder), "--filter", "nope*"])
    run(["--zoo", str(folder), "--filter", "wdl*", "--epochs", "1"])  # a smoke run writes nothing
    assert not (folder / "results.json").exists()
    assert "old table" in (folder / "README.md").read_text()
