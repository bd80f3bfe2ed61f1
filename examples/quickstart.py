"""Quickstart: AutoInt with a `full` embedding table on recemb's synthetic CTR data.

    python examples/quickstart.py            # ~20 s on 2 CPU cores
    python examples/quickstart.py --quick    # a smoke run (what the tests use)

The pieces, bottom up: data (a schema and batches of ids as KeyedJaggedTensors), a table
config, the embedding module built from both, a model that receives the embedding, and
the trainer. The generator knows the best AUC any model can reach on its rows.
"""

import argparse

import torch

from recemb import Full, StoreSettings, EmbeddingOptimizer, build_embedding
from recemb.data.synthetic import SyntheticConfig, bayes_auc, generate_with_truth
from recemb.models import AutoInt, AutoIntConfig
from recemb.train import TrainConfig, Trainer, evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny data, one epoch")
    args = parser.parse_args()
    rows, epochs = (3_000, 1) if args.quick else (40_000, 2)
    torch.set_num_threads(1)

    # 1. Data: 5 categorical features (Zipf ids), a multi-hot bag, a history, 4 dense values
    cfg = SyntheticConfig(rows=rows, cardinalities=(10, 100, 1_000, 10_000, 100_000), seed=0)
    data, truth = generate_with_truth(cfg)
    train, valid, test = data.split([0.7, 0.1, 0.2])
    print("features:", [f"{f.name} ({f.cardinality:,} ids)" for f in data.schema.sparse])

    # 2. The table: one row of 16 floats per id; embedding rows learn by row-wise Adagrad,
    #    fused into backward (fbgemm's TBE), so the dense optimizer never sees them
    settings = StoreSettings(optimizer=EmbeddingOptimizer("rowwise_adagrad", lr=0.05))
    embedding = build_embedding(data.schema, Full(dim=16), settings)
    memory = embedding.memory()
    print(f"table: {memory.params:,} parameters, {memory.bytes:,} bytes")

    # 3. The model receives its embedding: it never knows which table kind it got
    model = AutoInt(embedding, AutoIntConfig(layers=3, heads=2, attention_dim=32))

    # 4. Train (Adam on the dense weights; best epoch on validation AUC), then test
    history = Trainer(model, TrainConfig(epochs=epochs, batch_size=512, seed=0)).fit(train, valid)
    scores = evaluate(model, test)
    ceiling = bayes_auc(test.labels, truth[len(train) + len(valid) :])
    print(f"test AUC {scores['auc']:.4f} ± {scores['auc_se']:.4f} (best possible {ceiling:.4f}), "
          f"log loss {scores['logloss']:.4f}, {history.samples_per_s:,.0f} samples/s")


if __name__ == "__main__":
    main()
