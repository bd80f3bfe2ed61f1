"""Benchmarks behind `recemb bench ...`: each prints a table of ratios measured in one run
and returns them as a dict (the CLI prints it as JSON, last).

Each module named here has `add_arguments(parser)` and `run(args) -> dict`.
"""

# command -> (module, one-line help)
BENCHES: dict[str, tuple[str, str]] = {
    "lookup": (
        "recemb.bench.lookup",
        "embedding lookup: recemb vs raw TBE vs nn.EmbeddingBag vs torchrec; with --kinds, table kinds at a memory "
        "budget vs full",
    ),
    "compression": (
        "recemb.bench.compression",
        "train every kind at several budgets: CSV, PNG of AUC against bytes, best kind per budget",
    ),
    "train": ("recemb.bench.train_speed", "AutoInt training steps: recemb full and unified vs DeepCTR-Torch"),
    "zoo": ("recemb.bench.zoo", "run the model zoo's configs (models/*.yaml) and regenerate models/README.md"),
    "sequence": ("recemb.bench.sequence", "DIN / TWIN / DARE on Amazon: AUC, GAUC; DARE search-stage speed by width"),
    "pruning": ("recemb.bench.pruning", "full vs optembed vs mixed_dim vs dnis at >= 5x fewer bytes"),
    "distributed": ("recemb.distributed.bench", "2 processes vs 1 at the same global batch: samples/s"),
}
