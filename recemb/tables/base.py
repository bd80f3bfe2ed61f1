"""The table contract: raw ids -> id transform -> one fused store -> combine -> vectors."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.features import Schema
from recemb.storage import EmbeddingStore, MemoryReport, StoreLayout, StoreSettings, build_store
from recemb.storage.base import length_per_key
from recemb.storage.layout import BYTES_PER_FLOAT

VIEWS: tuple[str, ...] = ("representation", "attention")


@dataclass
class Embedded:
    """What a table returns for a batch.

    pooled: [B, F, D] for the schema's pooled features, in schema order.
    sequences: name -> (padded [B, L, D], mask [B, L], True where an item is present).
    attention: the attention view, where a kind keeps one apart from the representation
    (the decoupled kind; its width may differ); None means "the same vectors".
    """

    pooled: Tensor
    sequences: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    attention: Embedded | None = None

    def view(self, name: str) -> Embedded:
        """The `representation` (this) or `attention` view."""
        if name not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {name!r}")
        return self.attention if name == "attention" and self.attention is not None else self


_DEFERRED = ContextVar("recemb_deferred_store", default=False)


@contextmanager
def deferred_store() -> Iterator[None]:
    """Kinds built inside this block allocate no store: they hold a `StoreView` (their
    layout only), so a kind that wraps them (decoupled) can put their tables in its own
    store and call their `store_input` / `combine_output` around one lookup."""
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


class StoreView:
    """The layout of a store that another kind's store holds: what `combine_output` reads."""

    def __init__(self, layout: StoreLayout) -> None:
        self.layout = layout

    def split(self, out: Tensor) -> dict[str, Tensor]:
        """As EmbeddingStore.split: pooled [B, D], sequence [B, max_len, D] per key."""
        parts = {}
        for key, cols in self.layout.column_slices().items():
            lookup = self.layout.lookup(key)
            part = out[:, cols]
            parts[key] = part.view(out.shape[0], lookup.max_len, -1) if lookup.pooling == "none" else part
        return parts

    def __call__(self, *args: object, **kwargs: object) -> Tensor:
        raise RuntimeError(
            "this table was built with deferred_store(): its tables live in the store of the kind that "
            "wraps it; call that kind instead"
        )


class TableEmbedding(nn.Module, ABC):
    """Base of every kind. A subclass says which physical tables and lookups it needs
    (`layout`), how raw ids become store rows (`store_input`) and how the store's output
    becomes vectors (`combine_output`); `embed` runs the three steps. A kind that overrides
    `embed` instead works alone, but cannot be wrapped by another kind (decoupled).

    Every kind answers every view: an ordinary table gives the same vectors for the
    `representation` and the `attention` view, so every model accepts every kind.
    """

    def __init__(self, schema: Schema, settings: StoreSettings) -> None:
        super().__init__()
        self.schema = schema
        self.settings = settings
        self._keys = list(schema.names)
        self.register_buffer(
            "_cardinalities", torch.tensor([f.cardinality for f in schema.sparse]), persistent=False
        )
        self._single_rows = [i for i, f in enumerate(schema.sparse) if f.kind == "single"]

    def _build_store(self) -> None:
        """Called by subclasses once the attributes `layout()` reads are set. Inside
        `deferred_store()` the kind gets only a view of its layout, no tables."""
        layout = self.layout()
        self.store: EmbeddingStore | StoreView = (
            StoreView(layout) if _DEFERRED.get() else build_store(layout, self.settings)
        )

    @property
    @abstractmethod
    def dim(self) -> int:
        """Width D of each output vector."""

    @abstractmethod
    def layout(self) -> StoreLayout:
        """The physical tables and the store keys this kind reads."""

    def store_input(self, kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """The id transform: the store's KJT (keys `layout().keys`, rows in range) for a
        KJT already checked by `check_input`."""
        raise NotImplementedError(f"{type(self).__name__} does not implement store_input")

    def combine_output(self, out: Tensor, kjt: KeyedJaggedTensor) -> Embedded:
        """Vectors from the store's output [B, layout().width] for the input `kjt`."""
        raise NotImplementedError(f"{type(self).__name__} does not implement combine_output")

    def embed(self, kjt: KeyedJaggedTensor) -> Embedded:
        """Vectors for a KJT already checked by `check_input`."""
        out = self.store(self.store_input(kjt), check_ids=False)  # store_input gives rows in range
        return self.combine_output(out, kjt)

    def forward(self, kjt: KeyedJaggedTensor, view: str = "representation") -> Embedded:
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        self.check_input(kjt)
        return self.embed(kjt).view(view)

    # -- input checks shared by all kinds ------------------------------------------------
    def check_input(self, kjt: KeyedJaggedTensor) -> None:
        keys = list(kjt.keys())
        if keys != self._keys:
            missing = [k for k in self._keys if k not in keys]
            unknown = [k for k in keys if k not in self._keys]
            raise KeyError(
                f"the batch's sparse features must be exactly {self._keys} in schema order; "
                f"missing {missing}, unknown {unknown}"
                + ("" if missing or unknown else f", got order {keys}")
            )
        if kjt.values().dtype not in (torch.int64, torch.int32):
            raise TypeError(f"sparse ids must be int64 or int32, got {kjt.values().dtype}")
        if kjt.stride() < 1:
            raise ValueError("empty batch: a lookup needs at least one sample")
        if self._single_rows:
            self._check_single_valued(kjt.lengths().view(len(keys), -1))

    def _check_single_valued(self, lengths: Tensor) -> None:
        """Refuse a single-valued feature with 0 or several ids in a sample. lengths [F, B]."""
        if len(self._single_rows) == len(self._keys):  # the usual CTR batch: one pass, no gather
            lo, hi = torch.aminmax(lengths)
            if int(lo) == 1 and int(hi) == 1:
                return
        single = lengths[self._single_rows]  # [F_single, B]
        if (single != 1).any():
            row, sample = (int(v) for v in (single != 1).nonzero()[0])
            name = self._keys[self._single_rows[row]]
            raise ValueError(
                f"feature {name!r} is single-valued but sample {sample} has {int(single[row, sample])} ids; "
                f"give exactly one id (declare it kind='multi_hot' for bags)"
            )

    def check_id_range(self, kjt: KeyedJaggedTensor) -> None:
        """Refuse raw ids outside [0, cardinality) (for kinds that do not hash)."""
        values = kjt.values()
        per_key = length_per_key(kjt)
        if values.numel() and min(per_key) == max(per_key):  # same count per key: one pass
            lo, hi = torch.aminmax(values.view(len(per_key), -1), dim=1)  # [F]
            bad = (lo < 0) | (hi >= self._cardinalities)
            if not bool(bad.any()):
                return
        start = 0
        for spec, n in zip(self.schema.sparse, per_key):
            if n:
                lo, hi = (int(v) for v in torch.aminmax(values[start : start + n]))
                if lo < 0 or hi >= spec.cardinality:
                    raise IndexError(
                        f"feature {spec.name!r}: id {lo if lo < 0 else hi} is outside [0, {spec.cardinality}) "
                        f"(its cardinality); map unseen ids to an OOV id, or use oov='row'"
                    )
            start += n

    def values_cardinality(self, kjt: KeyedJaggedTensor) -> Tensor:
        """[nnz]: the cardinality of each value's feature."""
        counts = torch.tensor(kjt.length_per_key(), device=self._cardinalities.device)
        return torch.repeat_interleave(self._cardinalities, counts, output_size=kjt.values().numel())

    # -- combine helpers -----------------------------------------------------------------
    def split_store_output(self, out: Tensor, kjt: KeyedJaggedTensor) -> Embedded:
        """Embedded from a store output whose keys are the schema's features, one each."""
        batch = kjt.stride()
        if not self.schema.sequences:
            return Embedded(out.view(batch, len(self._keys), -1))
        parts = self.store.split(out)
        pooled = torch.stack([parts[f.name] for f in self.schema.pooled], dim=1) if self.schema.pooled else out.new_zeros(batch, 0, self.dim)
        lengths = kjt.lengths().view(len(self._keys), batch)
        sequences = {}
        for i, f in enumerate(self.schema.sparse):
            if f.is_sequence:
                mask = torch.arange(f.max_len, device=out.device).unsqueeze(0) < lengths[i].unsqueeze(1)  # [B, L]
                sequences[f.name] = (parts[f.name], mask)
        return Embedded(pooled, sequences)

    # -- memory ---------------------------------------------------------------------------
    def memory(self) -> MemoryReport:
        """Store tables plus any dense parameters of the kind (counted with Adam's 2 states)."""
        extra = sum(p.numel() for name, p in self.named_parameters() if not name.startswith("store."))
        return self.store.memory() + MemoryReport(
            extra, extra * BYTES_PER_FLOAT, 2 * extra * BYTES_PER_FLOAT
        )

    def fused_parameters(self) -> list[nn.Parameter]:
        return self.store.fused_parameters()
