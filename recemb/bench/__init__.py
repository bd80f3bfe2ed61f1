"""Benchmarks behind `recemb bench ...`: each prints a table of ratios measured in one run
and returns them as a dict (the CLI prints it as JSON)."""
