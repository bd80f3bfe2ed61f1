import json

import pytest

from recemb.cli import main

SMALL = "synthetic:rows=3000,cardinalities=20;500;4000,multi_hot=0,sequences=0"


def last_json(capsys) -> dict:
    lines = capsys.readouterr().out.strip().splitlines()
    return json.loads(lines[-1])


def test_train_prints_metrics_json_last_and_writes_the_run(tmp_path, capsys):
    code = main(["train", "--data", SMALL, "--model", "autoint", "--table", "full:dim=8", "--epochs", "1",
                 "--out", str(tmp_path)])
    assert code == 0
    result = last_json(capsys)
    for key in ("auc", "logloss", "table_params", "table_bytes", "samples_per_s"):
        assert key in result
    assert result["table_params"] == (20 + 500 + 4000) * 8
    assert result["table_bytes"] == 4 * result["table_params"]
    assert 0.5 < result["auc"] <= 1.0
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["resolved"]["table"] == {"kind": "full", "dim": 8, "oov": "error", "init_std": 0.01}
    assert run["metrics"]["auc"] == result["auc"] and "torch" in run["environment"]


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_config_file_maps_onto_the_dataclasses_and_flags_override_it(tmp_path, capsys, suffix):
    if suffix == ".yaml":
        text = f"data: \"{SMALL}\"\ntable:\n  kind: full\n  dim: 4\nmodel:\n  name: autoint\n  layers: 1\ntrain:\n  epochs: 1\n  batch_size: 512\n"
    else:
        text = f"data = \"{SMALL}\"\n[table]\nkind = \"full\"\ndim = 4\n[model]\nname = \"autoint\"\nlayers = 1\n[train]\nepochs = 1\nbatch_size = 512\n"
    path = tmp_path / f"run{suffix}"
    path.write_text(text)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "a")]) == 0
    assert last_json(capsys)["table_params"] == (20 + 500 + 4000) * 4
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["resolved"]["model"]["layers"] == 1 and run["resolved"]["train"]["batch_size"] == 512
    assert main(["train", "--config", str(path), "--table", "full:dim=8", "--batch-size", "1024"]) == 0
    assert last_json(capsys)["table_params"] == (20 + 500 + 4000) * 8


def test_kinds_and_models_list_the_registries(capsys):
    assert main(["kinds"]) == 0
    out = capsys.readouterr().out
    assert "full" in out and "dim" in out and "oov" in out
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "autoint" in out and "autoint_plus" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--table", "ful:dim=8"], "did you mean 'full'"),
        (["--table", "full:dim=abc"], "Full.dim must be int"),
        (["--table", "full:size=8"], "no setting 'size'"),
        (["--model", "autoin"], "did you mean 'autoint'"),
        (["--data", "criteo"], "needs a path"),
        (["--data", "criteo:/nonexistent/file.tsv"], "/nonexistent/file.tsv"),
        (["--epochs", "0"], "epochs must be >= 1"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(capsys, argv, message):
    assert main(["train", "--data", SMALL, *argv]) == 2  # a later --data wins
    assert message in capsys.readouterr().err
