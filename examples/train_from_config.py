"""Training from a config file: a zoo config (models/*.yaml) is the whole run, data to
store; keys given on top of it override the file's, section by section.

    python examples/train_from_config.py                      # AutoInt on the Criteo sample, ~30 s
    python examples/train_from_config.py --quick
    recemb train --config models/autoint_criteo.yaml --epochs 1   # the same from the shell
"""

import argparse
import json
from pathlib import Path

import torch

from recemb.config import load_config_file
from recemb.run import merge_config, run_training

ROOT = Path(__file__).resolve().parents[1]  # zoo data paths are relative to the repository root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "models/autoint_criteo.yaml"))
    parser.add_argument("--quick", action="store_true", help="the first 2,000 lines, one epoch")
    args = parser.parse_args()
    torch.set_num_threads(1)

    conf = load_config_file(args.config)
    name, _, path = conf["data"].partition(":")
    if path and not Path(path).is_absolute():
        conf["data"] = f"{name}:{ROOT / path}"
    overrides = {
        "train": {"epochs": 1},
        "table": {"kind": "unified", "dim": 16, "budget_ratio": 0.1},  # a new kind replaces the section
    }
    if args.quick:
        conf["data"] += "?max_rows=2000"
    conf = merge_config(conf, overrides)
    print("config:", json.dumps(conf))
    metrics = run_training(conf).metrics
    print(f"test AUC {metrics['auc']:.4f}, log loss {metrics['logloss']:.4f}, "
          f"table {metrics['table_bytes']:,} bytes ({metrics['kind']}), {metrics['samples_per_s']:,.0f} samples/s")


if __name__ == "__main__":
    main()
