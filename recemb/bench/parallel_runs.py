"""Independent training runs in worker processes (`recemb bench compression --jobs N`).

A run is a module-level function `fn(shared, task)`: `shared` (the data splits, the same for
every run) goes to each worker once, when it starts; `task` (a config) goes with each run.
Results come back tagged with their task's index, so the caller keeps its own order, and a
run seeds everything it draws from itself, so N workers give the results of one. Workers
start with `spawn` (a fork of a process that holds torch's thread pools can hang) and run
`threads` torch threads each.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

_shared: Any = None  # a worker's copy of `shared`, set once when it starts


def run_tasks(
    fn: Callable[[Any, Any], Any],
    shared: Any,
    tasks: Sequence[Any],
    jobs: int = 1,
    threads: int = 1,
    skip: Callable[[int], bool] = lambda index: False,
) -> Iterator[tuple[int, Any]]:
    """(index, fn(shared, tasks[index])) for each task, as the runs finish: in task order
    with jobs=1 (in this process), in order of completion otherwise. A task for which
    `skip(index)` is true by the time a worker is free for it does not run (the caller marks
    tasks it no longer needs, e.g. the other seeds of a configuration that failed)."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if jobs == 1 or len(tasks) <= 1:
        for index, task in enumerate(tasks):
            if not skip(index):
                yield index, fn(shared, task)
        return
    context = multiprocessing.get_context("spawn")
    workers = min(jobs, len(tasks))
    with ProcessPoolExecutor(workers, context, initializer=_start_worker, initargs=(shared, threads)) as pool:
        # submit as workers free up (not all at once), so that `skip` can still drop a task
        waiting = iter(range(len(tasks)))
        running: dict[Future, int] = {}

        def submit_next() -> None:
            for index in waiting:
                if not skip(index):
                    running[pool.submit(_call, fn, tasks[index])] = index
                    return

        for _ in range(workers):
            submit_next()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                index = running.pop(future)
                yield index, future.result()
                submit_next()


def _start_worker(shared: Any, threads: int) -> None:
    import torch

    global _shared
    torch.set_num_threads(threads)
    _shared = shared


def _call(fn: Callable[[Any, Any], Any], task: Any) -> Any:
    return fn(_shared, task)
