"""Every example runs (its --quick smoke path) from the repository root, as a user would
start it, and prints what it promises."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
# a line each example prints when it got to the end
EXPECTED = {
    "quickstart": "test AUC",
    "swap_table_kinds": "unified:dim=16,budget_ratio=0.1",
    "compression_sweep": "compression.png",
    "train_from_config": "test AUC",
    "own_csv": "DeepFM test AUC",
}


def test_every_example_is_listed():
    assert sorted(p.stem for p in EXAMPLES) == sorted(EXPECTED)


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs(path):
    done = subprocess.run(
        [sys.executable, str(path.relative_to(ROOT)), "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert EXPECTED[path.stem] in done.stdout
