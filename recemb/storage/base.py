"""The store contract: every physical table of a model behind one batched lookup."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.storage.layout import BYTES_PER_FLOAT, StoreLayout
from recemb.storage.optim import EmbeddingOptimizer


def length_per_key(kjt: KeyedJaggedTensor) -> list[int]:
    """Ids per key. torchrec's `kjt.length_per_key()` sums every length; when the KJT has
    offsets and no cached sums, reading the offsets at key boundaries takes F + 1 reads."""
    if kjt.length_per_key_or_none() is not None or kjt.variable_stride_per_key() or kjt.offsets_or_none() is None:
        return kjt.length_per_key()
    return kjt.offsets()[:: kjt.stride()].diff().tolist()  # key k: offsets[k*B] .. offsets[(k+1)*B]


@dataclass(frozen=True)
class MemoryReport:
    """Parameters and bytes of some tables, with the optimizer state counted apart."""

    params: int
    bytes: int
    optimizer_bytes: int

    @property
    @abstractmethod
    def total_bytes(self) -> int:
        return self.bytes + self.optimizer_bytes

    def __add__(self, other: MemoryReport) -> MemoryReport:
        return MemoryReport(
            self.params + other.params, self.bytes + other.bytes, self.optimizer_bytes + other.optimizer_bytes
        )


class EmbeddingStore(nn.Module, ABC):
    """Holds the tables of a StoreLayout; `forward(kjt) -> [B, layout.width]`.

    The KJT's keys are the layout's lookup keys, in order. Pooled keys give D columns,
    sequence keys max_len * D columns (padded with zeros past each sample's length).
    The optimizer runs inside backward: a training loop must keep `fused_parameters()`
    out of its torch optimizer.
    """

    def __init__(self, layout: StoreLayout, optimizer: EmbeddingOptimizer, seed: int = 0) -> None:
        super().__init__()
        self.layout = layout
        self.optimizer = optimizer
        self.seed = seed

    # -- what each store implements -----------------------------------------------------
    @abstractmethod
    def lookup(self, kjt: KeyedJaggedTensor) -> Tensor:
        """[B, width] for a KJT already checked by `check_input`."""
        ...

    @abstractmethod
    def table_weights(self) -> dict[str, Tensor]:
        """Each physical table's weights [rows, dim], detached copies."""
        ...

    @abstractmethod
    def load_table_weights(self, weights: dict[str, Tensor]) -> None:
        ...

    @abstractmethod
    def optimizer_states(self) -> dict[str, list[Tensor]]:
        """Each table's optimizer state tensors, copies, in EmbeddingOptimizer.state_shapes order."""
        ...

    @abstractmethod
    def load_optimizer_states(self, states: dict[str, list[Tensor]]) -> None:
        ...

    @abstractmethod
    def fused_parameters(self) -> list[nn.Parameter]:
        """Parameters updated inside backward, never to be given to a torch optimizer."""
        ...

    # -- shared -----------------------------------------------------------------------
    def forward(self, kjt: KeyedJaggedTensor, check_ids: bool = True) -> Tensor:
        """[B, width]. `check_ids=False` skips the id range check for callers whose ids
        are in range by construction (hashed kinds, or ids a table already validated)."""
        self.check_input(kjt, check_ids)
        return self.lookup(kjt)

    def check_input(self, kjt: KeyedJaggedTensor, check_ids: bool) -> None:
        keys = list(kjt.keys())
        if keys != list(self.layout.keys):
            missing = [k for k in self.layout.keys if k not in keys]
            unknown = [k for k in keys if k not in self.layout.keys]
            raise KeyError(
                f"store input keys must be exactly {list(self.layout.keys)} in that order; "
                f"missing {missing}, unknown {unknown}, got {keys}"
            )
        values = kjt.values()
        if values.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"ids must be int64 or int32, got {values.dtype}")
        if kjt.stride() < 1:
            raise ValueError("empty batch: a lookup needs at least one sample")
        lengths = kjt.lengths().view(len(keys), -1)
        for i, lk in enumerate(self.layout.lookups):
            if lk.pooling == "none" and lengths.shape[1] and int(lengths[i].max()) > lk.max_len:
                raise ValueError(
                    f"sequence key {lk.key!r} has a sample of {int(lengths[i].max())} ids; at most "
                    f"max_len={lk.max_len} allowed (truncate to the most recent items first)"
                )
        if check_ids and values.numel():
            self._check_ids(kjt)

    def _check_ids(self, kjt: KeyedJaggedTensor) -> None:
        per_key = kjt.length_per_key()
        start = 0
        values = kjt.values()
        for lk, n in zip(self.layout.lookups, per_key):
            if n:
                lo, hi = torch.aminmax(values[start : start + n])
                rows = self.layout.table(lk.table).rows
                if int(lo) < 0 or int(hi) >= rows:
                    bad = int(lo) if int(lo) < 0 else int(hi)
                    raise IndexError(
                        f"key {lk.key!r}: row id {bad} is outside table {lk.table!r} of {rows} rows; "
                        f"ids must be in [0, {rows})"
                    )
            start += n

    def split(self, out: Tensor) -> dict[str, Tensor]:
        """The store output by key: pooled [B, D], sequence [B, max_len, D]."""
        parts = {}
        for key, cols in self.layout.column_slices().items():
            part = out[:, cols]
            lk = self.layout.lookup(key)
            if lk.pooling == "none":
                part = part.view(out.shape[0], lk.max_len, -1)
            parts[key] = part
        return parts

    def memory(self) -> MemoryReport:
        params = self.layout.params()
        state = sum(self.optimizer.state_params(t.rows, t.dim) for t in self.layout.tables)
        return MemoryReport(params, params * BYTES_PER_FLOAT, state * BYTES_PER_FLOAT)

    def initial_weights(self) -> dict[str, Tensor]:
        """Seeded initial weights, identical for every store kind with the same seed."""
        gen = torch.Generator().manual_seed(self.seed)
        weights = {}
        for t in self.layout.tables:
            w = torch.empty(t.rows, t.dim)
            if t.init_bound > 0:
                w.uniform_(-t.init_bound, t.init_bound, generator=gen)
            else:
                w.normal_(0.0, t.init_std, generator=gen)
            weights[t.name] = w
        return weights

    # -- torchrec interchange -----------------------------------------------------------
    def ebc_state_dict(self) -> dict[str, Tensor]:
        """Weights as the state dict of a torchrec EmbeddingBagCollection over
        `layout.embedding_bag_configs()`."""
        return {f"embedding_bags.{name}.weight": w for name, w in self.table_weights().items()}

    def load_ebc_state_dict(self, state: dict[str, Tensor]) -> None:
        weights = {}
        for t in self.layout.tables:
            key = f"embedding_bags.{t.name}.weight"
            if key not in state:
                raise KeyError(f"state dict lacks {key!r}; it has {sorted(state)}")
            if tuple(state[key].shape) != (t.rows, t.dim):
                raise ValueError(f"{key!r} has shape {tuple(state[key].shape)}, table wants {(t.rows, t.dim)}")
            weights[t.name] = state[key]
        self.load_table_weights(weights)

    def to_embedding_bag_collection(self) -> nn.Module:
        """A torchrec EmbeddingBagCollection holding a copy of these tables."""
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        ebc = EmbeddingBagCollection(tables=self.layout.embedding_bag_configs(), device=torch.device("cpu"))
        ebc.load_state_dict(self.ebc_state_dict())
        return ebc

    def optimizer_steps(self) -> dict[str, int]:
        """Per table, the optimizer steps taken (Adam's bias correction reads it); stores
        whose optimizers keep no step count return {}."""
        return {}

    def load_optimizer_steps(self, steps: dict[str, int]) -> None:
        """Restore what `optimizer_steps` returned."""

    def check_state_count(self, table: str, own: list[Tensor], loaded: list[Tensor]) -> None:
        if len(own) != len(loaded):
            raise ValueError(
                f"table {table!r}: optimizer state has {len(loaded)} tensors, but {self.optimizer.name!r} keeps "
                f"{len(own)}; load a state saved with the same optimizer"
            )

    def store_state(self) -> dict[str, object]:
        """Weights, optimizer state and step counts, for checkpoints (one format for every
        store kind, so a state saved from one loads into another)."""
        return {"weights": self.table_weights(), "optimizer": self.optimizer_states(), "steps": self.optimizer_steps()}

    def load_store_state(self, state: dict[str, object]) -> None:
        self.load_table_weights(state["weights"])  # type: ignore[arg-type]
        self.load_optimizer_states(state["optimizer"])  # type: ignore[arg-type]
        self.load_optimizer_steps(state.get("steps", {}))  # type: ignore[arg-type]
