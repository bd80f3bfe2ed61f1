"""`recemb bench train` at toy sizes: every variant's step runs, DeepCTR-Torch (when
installed) is timed by its step and by its fit, and the speedups are keyed by kind. No
timing is asserted (machines are shared and noisy)."""

import argparse
import json
import sys

import pytest
import torch

from recemb.bench import train_speed

TINY = ["--batch", "64", "--cap", "200", "--repeats", "1", "--warmup", "0", "--rounds", "1", "--batches", "2"]


def parse(argv):
    parser = argparse.ArgumentParser()
    train_speed.add_arguments(parser)
    return parser.parse_args(argv)


def test_recemb_alone_has_no_speedups(capsys):
    result = train_speed.run(parse([*TINY, "--no-deepctr"]))
    assert set(result["variants"]) == {"full", "unified", "full+dense_fields", "unified+dense_fields"}
    assert result["speedup_vs_deepctr"] is None
    full, unified = result["variants"]["full"], result["variants"]["unified"]
    assert full["step_ms"] > 0 and full["fields"] == 26  # DeepCTR's configuration
    assert result["variants"]["full+dense_fields"]["fields"] == 26 + 13  # recemb's default AutoInt
    assert unified["table_bytes"] <= full["table_bytes"] // 10
    assert "not installed" in capsys.readouterr().out


def test_against_deepctr(capsys):
    had_requests = "requests" in sys.modules
    if train_speed.import_deepctr() is None:
        pytest.skip("deepctr-torch is not installed (make bench-env)")
    assert ("requests" in sys.modules) == had_requests  # the offline stand-in is not left behind
    threads = torch.get_num_threads()
    train_speed.main([*TINY, "--tables", "full:dim=16", "--recemb-fields", "sparse"])
    assert torch.get_num_threads() == threads
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["variants"]) == {"full", "deepctr", "deepctr_fit"}
    assert result["variants"]["deepctr"]["fields"] == 26
    assert set(result["speedup_vs_deepctr"]) == {"full"} and result["speedup_vs_deepctr"]["full"] > 0
    assert result["speedup_vs_deepctr_fit"]["full"] > 0


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="multiple of --heads"):
        train_speed.run(parse([*TINY, "--dim", "15"]))
    with pytest.raises(ValueError, match="dim"):
        train_speed.run(parse([*TINY, "--tables", "full:dim=8"]))


@pytest.mark.parametrize("mode, variant, fields", [("sparse", "full", 26), ("all", "full+dense_fields", 39)])
def test_recemb_fields_picks_the_variants(mode, variant, fields):
    result = train_speed.run(parse([*TINY, "--no-deepctr", "--tables", "full:dim=16", "--recemb-fields", mode]))
    assert set(result["variants"]) == {variant} and result["settings"]["recemb_fields"] == mode
    assert result["variants"][variant]["fields"] == fields
