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
}
