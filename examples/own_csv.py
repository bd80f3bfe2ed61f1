"""Reading your own CSV with a schema file: say what each column is, then train on it.

    python examples/own_csv.py            # ~15 s on 2 CPU cores
    python examples/own_csv.py --quick

The example writes a small click log (user, ad, a time stamp, a list of interests, a price,
the click) and its schema file to a temporary folder; with your data you write only the
schema file and point `--data csv:PATH?schema=FILE` (or `load_dataset`) at both. The schema
format is documented in recemb/data/schema_file.py; data/*.yaml are worked examples.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from recemb.data import load_dataset
from recemb.run import run_training

SCHEMA = """\
name: clicks
reader: csv
sep: ","
header: true
label: {column: clicked, values: {"0": 0, "1": 1}}
defaults: {min_count: 1, numeric: standardize}
columns:
  - {name: user, type: categorical}
  - {name: ad, type: categorical}
  - {name: when, type: datetime, format: "%Y-%m-%d %H", parts: {hour: hour, weekday: weekday}}
  - {name: interests, type: multi_hot, separator: "|", pooling: mean}
  - {name: price, type: numeric}
  - {name: clicked, type: label}
"""


def write_click_log(path: Path, rows: int, seed: int = 0) -> None:
    """A click log whose label depends on the user and ad (so there is something to learn)."""
    rng = np.random.default_rng(seed)
    users, ads = rng.integers(0, 300, rows), rng.integers(0, 50, rows)
    taste = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 50))  # user x ad affinity
    topics = ["sport", "music", "travel", "food", "tech"]
    lines = ["user,ad,when,interests,price,clicked"]
    for u, a in zip(users, ads):
        hour, day = rng.integers(0, 24), rng.integers(1, 29)
        interests = "|".join(rng.choice(topics, rng.integers(0, 3), replace=False))
        clicked = int(rng.random() < 1 / (1 + np.exp(-(taste[u, a] - 0.5))))
        lines.append(f"u{u},ad{a},2024-02-{day:02d} {hour:02d},{interests},{rng.gamma(2, 5):.2f},{clicked}")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows, one epoch")
    args = parser.parse_args()
    rows, epochs = (3_000, 1) if args.quick else (30_000, 3)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        csv, schema = Path(tmp) / "clicks.csv", Path(tmp) / "clicks.yaml"
        write_click_log(csv, rows)
        schema.write_text(SCHEMA)
        spec = f"csv:{csv}?schema={schema}"

        splits = load_dataset(spec)  # what the schema made of the columns
        s = splits.train.schema
        print("sparse features:", [f"{f.name} ({f.kind}, {f.cardinality} ids)" for f in s.sparse])
        print("dense features:", list(s.dense), "| rows:", splits.report)

        metrics = run_training(
            {"data": spec, "model": {"name": "deepfm"}, "table": {"kind": "full", "dim": 8},
             "train": {"epochs": epochs, "batch_size": 256}},
            data=splits,
        ).metrics
        print(f"DeepFM test AUC {metrics['auc']:.4f}, log loss {metrics['logloss']:.4f}")


if __name__ == "__main__":
    main()
