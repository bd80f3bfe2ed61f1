"""Which share of the global batch this process is training on.

A transform that draws random numbers per sample (OptEmbed's sampled widths, say) must
draw them for the global batch and keep its own rows, or a sharded run would give every
rank the draws of the first rows and differ from one process training on the global batch:

    index, count = batch_share()
    draws = sample(batch * count, seed)[index * batch : (index + 1) * batch]

Outside sharded training the share is (0, 1): the whole batch. Importing this module costs
nothing (no torchrec), so table kinds may use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_SHARE: ContextVar[tuple[int, int]] = ContextVar("recemb_batch_share", default=(0, 1))


def batch_share() -> tuple[int, int]:
    """(index, count): this process holds the index-th of `count` equal parts of the batch."""
    return _SHARE.get()


@contextmanager
def sharing(index: int, count: int) -> Iterator[None]:
    """Within the block, `batch_share()` is (index, count); the sharded trainer's steps."""
    if not 0 <= index < count:
        raise ValueError(f"batch share index must be in [0, {count}), got {index}")
    token = _SHARE.set((index, count))
    try:
        yield
    finally:
        _SHARE.reset(token)
