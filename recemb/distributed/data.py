"""Each rank's share of every global batch, and evaluation over ranks.

Training: the global batches are the single-process run's (same order, same seed); rank r
takes the r-th of `world` equal parts of each. Every rank gets the same batch size, which
row-wise sharding on gloo needs and which makes DDP's average of the ranks' mean losses the
global batch's mean loss; so the last batch of an epoch drops its `len % world` trailing
samples (at most world - 1 a epoch). Evaluation loses nothing: each global batch is padded
to a multiple of `world` by repeating its last row, and the padding's predictions dropped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from recemb import metrics
from recemb.data.batch import Batch, CTRData


def global_batch_rows(n: int, batch_size: int, shuffle: bool, seed: int) -> Iterator[torch.Tensor]:
    """The rows of each global batch, as CTRData.batches takes them."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def rank_batches(
    data: CTRData, batch_size: int, rank: int, world: int, shuffle: bool = False, seed: int = 0
) -> Iterator[Batch]:
    """This rank's equal part of every global batch of `batch_size` (see the module doc)."""
    if batch_size < world:
        raise ValueError(f"the global batch_size ({batch_size}) must be at least the number of ranks ({world})")
    for rows in global_batch_rows(len(data), batch_size, shuffle, seed):
        per_rank = rows.numel() // world
        if per_rank:
            yield data.batch(rows[rank * per_rank : (rank + 1) * per_rank])


def rank_samples(n: int, batch_size: int, world: int) -> int:
    """Samples an epoch trains on, over all ranks."""
    full, last = divmod(n, batch_size)
    return full * batch_size + last // world * world


@torch.no_grad()
def predict(model: nn.Module, data: CTRData, batch_size: int, pg: dist.ProcessGroup | None = None) -> np.ndarray:
    """Click probabilities [N] in row order, on every rank (a collective)."""
    rank, world = dist.get_rank(pg), dist.get_world_size(pg)
    device = next(iter(model.parameters())).device
    was_training = model.training
    model.eval()
    probs = []
    for rows in global_batch_rows(len(data), batch_size, False, 0):
        per_rank = math.ceil(rows.numel() / world)
        padded = torch.cat([rows, rows[-1:].expand(per_rank * world - rows.numel())])
        batch = data.batch(padded[rank * per_rank : (rank + 1) * per_rank])
        mine = torch.sigmoid(model(batch.sparse.to(device), batch.dense.to(device))).float().cpu()
        parts = [torch.empty_like(mine) for _ in range(world)]
        _all_gather(parts, mine, pg)
        probs.append(torch.cat(parts)[: rows.numel()])
    model.train(was_training)
    return torch.cat(probs).numpy() if probs else np.zeros(0)


def _all_gather(parts: list[torch.Tensor], mine: torch.Tensor, pg: dist.ProcessGroup | None) -> None:
    if dist.get_backend(pg) == "nccl":  # nccl gathers device tensors
        device = torch.device("cuda", torch.cuda.current_device())
        gpu = [p.to(device) for p in parts]
        dist.all_gather(gpu, mine.to(device), group=pg)
        for p, g in zip(parts, gpu):
            p.copy_(g.cpu())
    else:
        dist.all_gather(parts, mine, group=pg)


def evaluate(
    model: nn.Module,
    data: CTRData,
    batch_size: int,
    groups: torch.Tensor | np.ndarray | None = None,
    pg: dist.ProcessGroup | None = None,
) -> dict[str, float]:
    """recemb.train.evaluate over ranks: the same metrics (with `groups`, a user id per row,
    also `gauc`), on every rank."""
    labels = data.labels.numpy()
    probs = predict(model, data, batch_size, pg)
    out = {"auc": metrics.auc(labels, probs), "logloss": metrics.logloss(labels, probs)}
    out["auc_se"] = metrics.auc_standard_error(labels, probs) if not math.isnan(out["auc"]) else math.nan
    if groups is not None:
        out["gauc"] = metrics.gauc(labels, probs, np.asarray(groups))
    return out
