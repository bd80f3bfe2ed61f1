"""Smoke test of `recemb bench sequence` at toy sizes: quality variants train, the search
stage is timed at both widths, and the result has its keys. No timing is asserted."""

import argparse
from pathlib import Path

import pytest
import torch

from recemb.bench import sequence

VIDEO = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "amazon_video_games_seq" / "Video.txt"
TINY = [
    "--data", str(VIDEO), "--max-rows", "1200", "--max-len", "6", "--seeds", "2", "--variants", "dare_1table,dare",
    "--batch-size", "256", "--repeats", "2", "--warmup", "0", "--rounds", "1", "--long-len", "20",
    "--search-dims", "8", "--search-batches", "1", "--bootstrap", "20", "--dim", "8",
]  # fmt: skip


@pytest.mark.skipif(not VIDEO.is_file(), reason="the Amazon file is not in ../shared/data")
def test_run_reports_quality_comparisons_and_search_ratios(capsys):
    parser = argparse.ArgumentParser()
    sequence.add_arguments(parser)
    threads = torch.get_num_threads()
    result = sequence.run(parser.parse_args(TINY))
    assert torch.get_num_threads() == threads  # restored
    quality = result["quality"]
    assert set(quality["variants"]) == {"dare_1table", "dare"}
    assert len(quality["variants"]["dare"]["runs"]) == 2
    assert quality["variants"]["dare"]["table_params"] > quality["variants"]["dare_1table"]["table_params"]
    comparison = quality["comparisons"]["dare_vs_dare_1table"]["per_seed"][0]
    assert comparison["low"] <= comparison["high"] and -1 <= comparison["auc_diff"] <= 1
    assert {k.split(",")[0] for k in result["search"]} == {"lookup+search", "search"}
    assert all(r["half_over_full"] > 0 for r in result["search"].values())
    assert "search" in capsys.readouterr().out
