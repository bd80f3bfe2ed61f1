"""Stores: every physical table of a model behind one batched lookup."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from recemb.storage.base import EmbeddingStore, MemoryReport
from recemb.storage.layout import LookupSpec, StoreLayout, TableSpec
from recemb.storage.optim import OPTIMIZERS, EmbeddingOptimizer
from recemb.storage.reference import ReferenceStore

STORES: tuple[str, ...] = ("tbe", "reference")
# torchrec collections, for recemb.distributed to shard (it trains in one process too)
SHARDABLE_STORE = "torchrec"


@dataclass(frozen=True)
class StoreSettings:
    """Which store holds the tables, its fused optimizer, init seed and device."""

    backend: str = "tbe"
    optimizer: EmbeddingOptimizer = field(default_factory=EmbeddingOptimizer)
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.backend not in (*STORES, SHARDABLE_STORE):
            raise ValueError(
                f"StoreSettings.backend must be one of {STORES}, got {self.backend!r} "
                f"(or {SHARDABLE_STORE!r}, the store recemb.distributed shards)"
            )
        if self.backend == "reference" and torch.device(self.device).type != "cpu":
            raise ValueError(
                f"the reference store runs on the CPU only, got device={self.device!r}; use backend='tbe'"
            )


def build_store(layout: StoreLayout, settings: StoreSettings | None = None) -> EmbeddingStore:
    """The store for `layout`: `tbe` (fbgemm, fused), `reference` (plain PyTorch) or
    `torchrec` (torchrec collections, what recemb.distributed shards)."""
    settings = settings or StoreSettings()
    if settings.backend == "tbe":
        from recemb.storage.tbe import TBEStore  # the only import of fbgemm's training TBE

        return TBEStore(layout, settings.optimizer, settings.seed, settings.device)
    if settings.backend == SHARDABLE_STORE:
        from recemb.storage.torchrec_store import TorchrecStore

        return TorchrecStore(layout, settings.optimizer, settings.seed, settings.device)
    return ReferenceStore(layout, settings.optimizer, settings.seed)


__all__ = [
    "OPTIMIZERS",
    "SHARDABLE_STORE",
    "STORES",
    "EmbeddingOptimizer",
    "EmbeddingStore",
    "LookupSpec",
    "MemoryReport",
    "ReferenceStore",
    "StoreLayout",
    "StoreSettings",
    "TableSpec",
    "build_store",
]
