"""The compression sweep (`recemb bench compression`) from Python: several table kinds at a
ladder of memory budgets on the Criteo sample, AUC against bytes, a CSV and a plot.

    python examples/compression_sweep.py                   # ~50 s on 2 CPU cores
    python examples/compression_sweep.py --quick           # synthetic data, a smoke run
    python examples/compression_sweep.py --out sweep_out   # keep the CSV, PNG and JSON

The full protocol (every kind, budgets 1, 0.1, 0.01, three seeds) is the command
    recemb bench compression --data criteo:PATH --model autoint --kinds all \\
        --budgets 1,0.1,0.01 --seeds 3 --out DIR
"""

import argparse
import tempfile
from pathlib import Path

from recemb.bench import compression

CRITEO = Path(__file__).resolve().parents[1] / "../shared/data/criteo/kaggle_train_first10k.tsv"
TINY = "synthetic:rows=2000,cardinalities=10;100;1000,multi_hot=0,sequences=0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="synthetic data, one epoch, one seed")
    parser.add_argument("--out", help="folder for compression.csv / .png / .json (default: a temporary one)")
    args = parser.parse_args()
    data = TINY if args.quick or not CRITEO.exists() else f"criteo:{CRITEO}"
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        argv = ["--data", data, "--model", "autoint", "--kinds", "full,hashed,qr,unified",
                "--budgets", "1,0.1", "--seeds", "1", "--epochs", "1", "--out", out]
        result = compression.main([*argv, "--quick"] if args.quick else argv)
        for entry in result["summary"]:
            print(f"budget {entry['budget']:g}: best kind {entry['best']} (AUC {entry['best_auc']:.4f})")
        print("files:", sorted(p.name for p in Path(out).iterdir()))


if __name__ == "__main__":
    main()
