"""State that a kind's id transform keeps, kept consistent across ranks.

The id transforms run replicated: every rank transforms its own part of the batch with
the same code and the same settings, so a stateless kind needs nothing. State a transform
updates from the ids it sees (say, the id counts of a frequency-pruned kind) would drift
apart, each rank counting its own samples. The rules, for the persistent buffers of every
module outside the stores:

- a buffer named in its module's `summed_state` (a ClassVar tuple of names) holds sums over
  samples: after every optimizer step each rank's increments since the last step are summed
  over ranks, so every rank holds what one process training on the global batch holds. The
  transform must read it as it stood before the batch (update it after reading), as one
  process would see it.
- every other buffer must be identical on every rank by construction (computed from
  settings, parameters or summed state; a kind may list it in `replicated_state` to say so):
  it is verified after the first step and at every `check` (each epoch), and a difference
  stops training with the buffer's name, rather than letting ranks drift apart.

Per-sample random draws are the other way ranks can differ from one process: see
recemb.distributed.share.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist
from torch import Tensor, nn

from recemb.storage.base import EmbeddingStore


def transform_buffers(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(qualified name, owner, buffer name) of every persistent buffer outside the stores."""
    stores = [name for name, m in model.named_modules() if isinstance(m, EmbeddingStore)]
    out = []
    for name, module in model.named_modules():
        if any(name == s or name.startswith(s + ".") for s in stores):
            continue
        for buf, value in module._buffers.items():
            if value is not None and buf not in module._non_persistent_buffers_set:
                out.append((f"{name}.{buf}" if name else buf, module, buf))
    return out


class TransformState:
    """Keeps `model`'s transform state consistent over the ranks of `pg`."""

    def __init__(self, model: nn.Module, pg: dist.ProcessGroup | None = None) -> None:
        self.pg = pg
        self.summed: list[tuple[str, nn.Module, str]] = []
        self.replicated: list[tuple[str, nn.Module, str]] = []  # declared or not: verified
        for entry in transform_buffers(model):
            _, owner, buf = entry
            (self.summed if buf in getattr(owner, "summed_state", ()) else self.replicated).append(entry)
        self._checked = False
        self.reset()

    def reset(self) -> None:
        """Take the current state as agreed (at the start, after a checkpoint is loaded)."""
        self._agreed = [owner._buffers[buf].detach().clone() for _, owner, buf in self.summed]

    @torch.no_grad()
    def sync(self) -> None:
        """Sum every rank's increments since the last sync (a collective, after each step);
        after the first, verify the replicated state."""
        for (_, owner, buf), agreed in zip(self.summed, self._agreed):
            current: Tensor = owner._buffers[buf]
            delta = current - agreed
            dist.all_reduce(delta, group=self.pg)
            current.copy_(agreed + delta)
            agreed.copy_(current)
        if not self._checked:
            self.check()
            self._checked = True

    def check(self) -> None:
        """Raise if a buffer that must be replicated differs between ranks (a collective)."""
        if not self.replicated:
            return
        mine = [_digest(owner._buffers[buf]) for _, owner, buf in self.replicated]
        everyone: list[object] = [None] * dist.get_world_size(self.pg)
        dist.all_gather_object(everyone, mine, group=self.pg)
        differ = [q for i, (q, _, _) in enumerate(self.replicated) if len({d[i] for d in everyone}) > 1]  # type: ignore[index]
        if differ:
            raise RuntimeError(
                f"state {differ} differs between ranks: a buffer that sums over samples must be declared in its "
                f"module's `summed_state` (then it is summed over ranks after each step); any other must be "
                f"computed identically on every rank (see recemb/distributed/state.py)"
            )


def _digest(t: Tensor) -> str:
    return hashlib.sha1(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
