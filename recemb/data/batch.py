"""In-memory CTR data and the batches the models read: ids as a torchrec KJT, dense, labels."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.features import Schema


def kjt_from_ids(ids: Tensor, keys: Sequence[str]) -> KeyedJaggedTensor:
    """A KJT of one id per sample and feature from ids [B, F] (column f is keys[f])."""
    if ids.dim() != 2 or ids.shape[1] != len(keys):
        raise ValueError(f"ids must be [B, {len(keys)}] for keys {list(keys)}, got shape {tuple(ids.shape)}")
    batch, n = ids.shape
    lengths = torch.ones(n * batch, dtype=torch.int64)
    offsets = torch.arange(n * batch + 1, dtype=torch.int64)
    return KeyedJaggedTensor(
        keys=list(keys), values=ids.t().reshape(-1), lengths=lengths, offsets=offsets, stride=batch
    )


@dataclass
class Jagged:
    """Variable-length ids of one feature: sample i owns values[offsets[i]:offsets[i+1]]."""

    values: Tensor  # [nnz] int64
    offsets: Tensor  # [N + 1] int64

    @property
    def lengths(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def take(self, rows: Tensor) -> Jagged:
        lengths = self.lengths[rows]
        offsets = torch.zeros(rows.numel() + 1, dtype=torch.int64)
        torch.cumsum(lengths, 0, out=offsets[1:])
        # position of each output value in self.values
        source = torch.repeat_interleave(self.offsets[:-1][rows] - offsets[:-1], lengths)
        source += torch.arange(int(offsets[-1]))
        return Jagged(self.values[source], offsets)


@dataclass
class Batch:
    sparse: KeyedJaggedTensor
    dense: Tensor  # [B, n_dense] float32
    labels: Tensor  # [B] float32

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class CTRData:
    """A dataset held in memory: single-valued ids [N, F_single], jagged ids for multi-hot
    and sequence features, dense floats [N, n_dense], labels [N] in {0, 1}."""

    schema: Schema
    single: Tensor  # [N, number of single-valued features], columns in schema order
    jagged: dict[str, Jagged]
    dense: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        n = self.labels.shape[0]
        singles = [f.name for f in self.schema.sparse if f.kind == "single"]
        if tuple(self.single.shape) != (n, len(singles)):
            raise ValueError(f"CTRData.single must be [{n}, {len(singles)}] for {singles}, got {tuple(self.single.shape)}")
        if tuple(self.dense.shape) != (n, len(self.schema.dense)):
            raise ValueError(
                f"CTRData.dense must be [{n}, {len(self.schema.dense)}], got {tuple(self.dense.shape)}"
            )
        for f in self.schema.sparse:
            if f.kind == "single":
                continue
            if f.name not in self.jagged:
                raise KeyError(f"CTRData.jagged lacks feature {f.name!r} ({f.kind})")
            if self.jagged[f.name].offsets.numel() != n + 1:
                raise ValueError(f"CTRData.jagged[{f.name!r}] must have {n + 1} offsets")
            if f.is_sequence and n and int(self.jagged[f.name].lengths.max()) > f.max_len:
                raise ValueError(
                    f"sequence feature {f.name!r} has a history longer than max_len={f.max_len}; "
                    f"keep the {f.max_len} most recent items"
                )
        if torch.isnan(self.dense).any():
            row = int(torch.isnan(self.dense).any(dim=1).nonzero()[0])
            raise ValueError(f"CTRData.dense has NaN (first in row {row}); fill missing values first")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, rows: Tensor) -> CTRData:
        return CTRData(
            self.schema,
            self.single[rows],
            {k: j.take(rows) for k, j in self.jagged.items()},
            self.dense[rows],
            self.labels[rows],
        )

    def split(self, fractions: Sequence[float]) -> list[CTRData]:
        """Consecutive parts in row order (file order: no shuffling, no look-ahead)."""
        if abs(sum(fractions) - 1.0) > 1e-6 or any(f < 0 for f in fractions):
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {list(fractions)}")
        n = len(self)
        bounds = [round(n * sum(fractions[:i])) for i in range(len(fractions) + 1)]
        return [self.take(torch.arange(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def batch(self, rows: Tensor) -> Batch:
        if self.jagged:
            kjt = self._mixed_kjt(rows)
        else:
            kjt = kjt_from_ids(self.single[rows], self.schema.names)
        return Batch(kjt, self.dense[rows], self.labels[rows])

    def _mixed_kjt(self, rows: Tensor) -> KeyedJaggedTensor:
        single_col = {f.name: i for i, f in enumerate(f for f in self.schema.sparse if f.kind == "single")}
        values, lengths = [], []
        for f in self.schema.sparse:
            if f.name in single_col:
                values.append(self.single[rows, single_col[f.name]])
                lengths.append(torch.ones(rows.numel(), dtype=torch.int64))
            else:
                part = self.jagged[f.name].take(rows)
                values.append(part.values)
                lengths.append(part.lengths)
        return KeyedJaggedTensor.from_lengths_sync(list(self.schema.names), torch.cat(values), torch.cat(lengths))

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> Iterator[Batch]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = (
            torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(len(self))
        )
        for start in range(0, len(self), batch_size):
            yield self.batch(order[start : start + batch_size])
