"""Timing for the benchmarks: warm-up calls, then the median of repeated calls.

Machines running these are often shared, so a benchmark compares variants by ratios of
medians measured in the same run, and interleaves the variants in rounds
(`time_interleaved`) so that a burst of outside load hits every variant alike. Each call
is timed by two clocks: wall time, and the process's CPU time (user + system, page faults
included), which leaves out the time the process waits for a core another program holds;
on a busy machine CPU-time ratios are the steadier ones.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

CLOCKS: tuple[str, ...] = ("cpu", "wall")


@dataclass(frozen=True)
class Timing:
    """Per-call times of one function, in milliseconds, by both clocks."""

    wall_ms: tuple[float, ...] = field(repr=False)
    cpu_ms: tuple[float, ...] = field(repr=False)

    def median_ms(self, clock: str = "wall") -> float:
        return statistics.median(self._samples(clock))

    def min_ms(self, clock: str = "wall") -> float:
        return min(self._samples(clock))

    @property
    def repeats(self) -> int:
        return len(self.wall_ms)

    def _samples(self, clock: str) -> tuple[float, ...]:
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
        return self.cpu_ms if clock == "cpu" else self.wall_ms


def _calls(fn: Callable[[int], object], first_step: int, count: int) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for step in range(first_step, first_step + count):
        w0, c0 = time.perf_counter(), time.process_time()
        fn(step)
        c1, w1 = time.process_time(), time.perf_counter()
        wall.append((w1 - w0) * 1e3)
        cpu.append((c1 - c0) * 1e3)
    return wall, cpu


def time_fn(fn: Callable[[int], object], warmup: int = 3, repeats: int = 10) -> Timing:
    """Call `fn(step)` `warmup` times untimed, then `repeats` times timed; step counts on
    across both, so `fn` can cycle through pre-built inputs."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    _calls(fn, 0, warmup)
    wall, cpu = _calls(fn, warmup, repeats)
    return Timing(tuple(wall), tuple(cpu))


def time_interleaved(
    fns: dict[str, Callable[[int], object]], warmup: int = 3, repeats: int = 10, rounds: int = 1
) -> dict[str, Timing]:
    """Time every function the way `time_fn` does, in `rounds` rounds that each run every
    function in turn (its `warmup` calls, then its share of the `repeats` timed calls);
    each function's median is taken over all its timed calls."""
    if warmup < 0 or repeats < 1 or rounds < 1:
        raise ValueError(f"need warmup >= 0, repeats >= 1 and rounds >= 1, got {warmup}, {repeats}, {rounds}")
    rounds = min(rounds, repeats)
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    steps = dict.fromkeys(fns, 0)
    for r in range(rounds):
        share = repeats // rounds + (1 if r < repeats % rounds else 0)
        for name, fn in fns.items():
            _calls(fn, steps[name], warmup)
            w, c = _calls(fn, steps[name] + warmup, share)
            wall[name] += w
            cpu[name] += c
            steps[name] += warmup + share
    return {name: Timing(tuple(wall[name]), tuple(cpu[name])) for name in fns}
