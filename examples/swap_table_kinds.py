"""Swapping table kinds is one line: the same AutoInt with a full table and with compressed
tables at a tenth of its memory, trained on the same rows and scored on the same test rows.

    python examples/swap_table_kinds.py            # ~40 s on 2 CPU cores
    python examples/swap_table_kinds.py --quick

Every kind reports its memory, so kinds compare at equal budget: `budget_ratio=0.1` sizes a
compressed kind to 10% of what `full` takes for this schema and width. The paired bootstrap
interval says whether a difference in test AUC is larger than the test set can resolve.
"""

import argparse

import torch

from recemb import StoreSettings, EmbeddingOptimizer, build_embedding, parse_table
from recemb.data.synthetic import SyntheticConfig, generate
from recemb.metrics import paired_bootstrap_auc_diff
from recemb.models import AutoInt, AutoIntConfig
from recemb.train import TrainConfig, Trainer, evaluate, predict, seed_everything

TABLES = [
    "full:dim=16",
    "hashed:dim=16,budget_ratio=0.1",  # the hashing trick
    "qr:dim=16,budget_ratio=0.1",  # quotient-remainder
    "unified:dim=16,budget_ratio=0.1",  # every feature in one shared table
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny data, one epoch")
    args = parser.parse_args()
    rows, epochs = (3_000, 1) if args.quick else (30_000, 2)
    torch.set_num_threads(1)
    data = generate(SyntheticConfig(rows=rows, cardinalities=(10, 100, 1_000, 10_000, 100_000), seed=0))
    train, valid, test = data.split([0.7, 0.1, 0.2])
    labels = test.labels.numpy()
    settings = StoreSettings(optimizer=EmbeddingOptimizer("rowwise_adagrad", lr=0.05))

    reference = None
    print(f"{'table':34s} {'bytes':>9s} {'test AUC':>9s}  ΔAUC vs full [95% CI]")
    for text in TABLES:
        seed_everything(0)
        table = parse_table(text)  # <- the only thing that changes between runs
        model = AutoInt(build_embedding(data.schema, table, settings), AutoIntConfig())
        Trainer(model, TrainConfig(epochs=epochs, batch_size=512, seed=0)).fit(train, valid)
        auc, probs = evaluate(model, test)["auc"], predict(model, test)
        if reference is None:
            reference, delta = probs, "—"
        else:
            diff, low, high = paired_bootstrap_auc_diff(labels, reference, probs, rounds=200)
            delta = f"{diff:+.4f} [{low:+.4f}, {high:+.4f}]"
        print(f"{text:34s} {model.embedding.memory().bytes:9,d} {auc:9.4f}  {delta}")


if __name__ == "__main__":
    main()
