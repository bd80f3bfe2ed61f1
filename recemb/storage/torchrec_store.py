"""The torchrec store: the physical tables as torchrec collections, so that
DistributedModelParallel can shard them (see recemb/distributed).

Tables read only by pooled keys of one pooling go into one EmbeddingBagCollection
(`bags`); a table read by a sequence key, or with both sum and mean, goes into an
EmbeddingCollection (one per width, as torchrec wants one width per collection), which
returns every id's row, and the store pads the sequence keys and pools the pooled ones
itself. Every key reads its table's rows once, so a table shared by a target item and its
history is one table here too. Outputs are read by key (a table-wise sharded collection
returns its keys grouped by rank) and put in the layout's column order, [B, width], like
every store.

Unsharded, the optimizer runs in a post-accumulate-grad hook with the reference formulas
on the rows whose gradient is not zero (the rows a batch read: the zero-gradient rows of a
batch are left alone by sgd and both Adagrads anyway). That path has dense gradients and
exists for correctness and interchange; the TBE store is the fast single-process one. `device="meta"` defers the tables:
nothing is allocated, and `recemb.distributed` creates them shard by shard.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import Tensor, nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.storage.base import EmbeddingStore
from recemb.storage.layout import StoreLayout, TableSpec
from recemb.storage.optim import EmbeddingOptimizer, reference_update

# the optimizer fbgemm fuses into the backward of sharded tables, by EmbeddingOptimizer.name
FUSED_OPTIMIZER = {
    "sgd": EmbOptimType.EXACT_SGD,
    "adagrad": EmbOptimType.EXACT_ADAGRAD,
    "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
    "adam": EmbOptimType.ADAM,
}
BAGS = "bags"  # the module name of the EmbeddingBagCollection; the others are `dim{D}`
_EMPTY = nn.ModuleDict()  # the attribute names a table name must not take


class TorchrecStore(EmbeddingStore):
    """The layout's tables in torchrec collections (`collections`: `bags`, `dim{D}`)."""

    def __init__(
        self,
        layout: StoreLayout,
        optimizer: EmbeddingOptimizer,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(layout, optimizer, seed)
        device = torch.device(device)
        if optimizer.name == "adam" and device.type not in ("cuda", "meta"):  # meta: checked when sharded
            raise ValueError(
                "EmbeddingOptimizer.name='adam' is not supported by the torchrec store off CUDA (fbgemm's "
                "sharded tables have no CPU Adam); use sgd, adagrad or rowwise_adagrad, or the reference store"
            )
        self.torchrec_names = _torchrec_names([t.name for t in layout.tables])
        self.deferred = device.type == "meta"
        self.groups = self._group_tables(layout)  # module name -> its tables' names
        self.collections = nn.ModuleDict()
        renamed = self.torchrec_names
        for name, tables in self.groups.items():
            sub = StoreLayout(
                tuple(dataclasses.replace(layout.table(t), name=renamed[t]) for t in tables),
                tuple(dataclasses.replace(lk, table=renamed[lk.table]) for lk in layout.lookups if lk.table in tables),
            )
            if name == BAGS:
                self.collections[name] = EmbeddingBagCollection(sub.embedding_bag_configs(), device=device)
            else:
                configs = [
                    EmbeddingConfig(
                        name=t.name,
                        num_embeddings=t.rows,
                        embedding_dim=t.dim,
                        feature_names=[lk.key for lk in sub.lookups if lk.table == t.name],
                    )
                    for t in sub.tables
                ]
                self.collections[name] = EmbeddingCollection(configs, device=device)
        # each collection's keys; the KJT's keys are permuted to this order (None: already in it)
        self._group_keys = {
            name: [lk.key for lk in layout.lookups if lk.table in tables] for name, tables in self.groups.items()
        }
        order = [layout.keys.index(k) for keys in self._group_keys.values() for k in keys]
        self._key_order = order if order != sorted(order) else None
        self.states: dict[str, list[Tensor]] = {}
        self.steps: dict[str, int] = {}
        if not self.deferred:  # torchrec's own init is overwritten with the seeded one
            self.load_table_weights(self.initial_weights())
            for t in layout.tables:
                self.states[t.name] = [torch.zeros(s, device=device) for s in optimizer.state_shapes(t.rows, t.dim)]
                self.steps[t.name] = 0
                self.weight(t.name).register_post_accumulate_grad_hook(self._make_update(t.name))

    @staticmethod
    def _group_tables(layout: StoreLayout) -> dict[str, list[str]]:
        """bags: tables read only pooled, with one pooling; dim{D}: the others, by width."""
        groups: dict[str, list[str]] = {}
        for t in layout.tables:
            poolings = {lk.pooling for lk in layout.lookups if lk.table == t.name}
            name = BAGS if len(poolings) == 1 and "none" not in poolings else f"dim{t.dim}"
            groups.setdefault(name, []).append(t.name)
        return groups

    # -- where each table lives ----------------------------------------------------------
    def collection_of(self, table: str) -> str:
        return next(name for name, tables in self.groups.items() if table in tables)

    def weight(self, table: str) -> nn.Parameter:
        """The parameter of `table` (unsharded)."""
        module = self.collections[self.collection_of(table)]
        parent = module.embedding_bags if isinstance(module, EmbeddingBagCollection) else module.embeddings
        return parent[self.torchrec_names[table]].weight

    @property
    def sharded(self) -> bool:
        return any(not isinstance(m, (EmbeddingBagCollection, EmbeddingCollection)) for m in self.collections.values())

    def _check_local(self, what: str) -> None:
        if self.sharded or self.deferred:
            raise RuntimeError(
                f"{what} needs the whole tables in this process, but this torchrec store is "
                f"{'sharded' if self.sharded else 'deferred (device=meta)'}; use recemb.distributed's "
                f"gather_table_weights / checkpoints instead"
            )

    def iter_initial_weights(self) -> Iterator[tuple[TableSpec, Tensor]]:
        """(table, weights) one table at a time, the values `initial_weights()` gives: a
        sharded store copies each into its shards without holding every table at once."""
        gen = torch.Generator().manual_seed(self.seed)
        for t in self.layout.tables:  # the same draws, in the same order, as initial_weights
            w = torch.empty(t.rows, t.dim)
            if t.init_bound > 0:
                w.uniform_(-t.init_bound, t.init_bound, generator=gen)
            else:
                w.normal_(0.0, t.init_std, generator=gen)
            yield t, w

    # -- lookup -----------------------------------------------------------------------
    def lookup(self, kjt: KeyedJaggedTensor) -> Tensor:
        batch = kjt.stride()
        if self._key_order is not None:
            kjt = kjt.permute(self._key_order)
        sizes = [len(keys) for keys in self._group_keys.values()]
        parts = kjt.split(sizes) if len(sizes) > 1 else [kjt]
        by_key: dict[str, Tensor] = {}
        for (name, module), part in zip(self.collections.items(), parts):
            out = _waited(module(part))
            if name == BAGS:
                by_key.update(out.to_dict())  # KeyedTensor: read by key, never by position
                continue
            for key in self._group_keys[name]:
                jt = out[key]
                by_key[key] = self._from_rows(key, jt.values(), jt.lengths(), batch)
        return torch.cat([by_key[k] for k in self.layout.keys], dim=1)

    def _from_rows(self, key: str, rows: Tensor, lengths: Tensor, batch: int) -> Tensor:
        """[B, D] pooled or [B, max_len * D] padded, from each id's row [nnz, D]."""
        lk = self.layout.lookup(key)
        lengths = lengths.long()
        sample = torch.repeat_interleave(torch.arange(batch, device=rows.device), lengths, output_size=rows.shape[0])
        if lk.pooling == "none":
            starts = torch.cumsum(lengths, 0) - lengths
            position = torch.arange(rows.shape[0], device=rows.device) - starts[sample]
            out = rows.new_zeros(batch, lk.max_len, rows.shape[1]).index_put((sample, position), rows)
            return out.flatten(1)
        pooled = rows.new_zeros(batch, rows.shape[1]).index_add(0, sample, rows)
        if lk.pooling == "mean":
            pooled = pooled / lengths.clamp(min=1).unsqueeze(1).to(rows.dtype)
        return pooled

    # -- the optimizer ----------------------------------------------------------------------
    def fused_params(self) -> dict[str, object]:
        """fbgemm's settings for the optimizer of sharded tables (torchrec sharders' `fused_params`)."""
        opt = self.optimizer
        return {
            "optimizer": FUSED_OPTIMIZER[opt.name],
            "learning_rate": opt.lr,
            "eps": opt.eps,
            "beta1": opt.beta1,
            "beta2": opt.beta2,
            "weight_decay": opt.weight_decay,
        }

    def _make_update(self, table: str):
        def update(param: nn.Parameter) -> None:
            grad, param.grad = param.grad, None
            if grad is None:
                return
            rows = grad.ne(0).any(dim=1).nonzero().squeeze(1)
            if rows.numel():
                self.steps[table] += 1
                reference_update(self.optimizer, param.data, grad, rows, self.states[table], self.steps[table])

        return update

    # -- weights and optimizer state ------------------------------------------------------
    def table_weights(self) -> dict[str, Tensor]:
        self._check_local("table_weights")
        return {t.name: self.weight(t.name).detach().clone() for t in self.layout.tables}

    @torch.no_grad()
    def load_table_weights(self, weights: dict[str, Tensor]) -> None:
        self._check_local("load_table_weights")
        for t in self.layout.tables:
            self.weight(t.name).copy_(weights[t.name])

    def optimizer_states(self) -> dict[str, list[Tensor]]:
        self._check_local("optimizer_states")
        return {name: [s.clone() for s in states] for name, states in self.states.items()}

    def load_optimizer_states(self, states: dict[str, list[Tensor]]) -> None:
        self._check_local("load_optimizer_states")
        for name, own in self.states.items():
            self.check_state_count(name, own, states[name])
            for s, loaded in zip(own, states[name]):
                s.copy_(loaded)

    def optimizer_steps(self) -> dict[str, int]:
        return dict(self.steps)

    def load_optimizer_steps(self, steps: dict[str, int]) -> None:
        self.steps.update({k: v for k, v in steps.items() if k in self.steps})

    def fused_parameters(self) -> list[nn.Parameter]:
        """The tables' parameters (sharded: this rank's shards, including data-parallel
        copies, which recemb.distributed updates with the same formulas after backward)."""
        return list(self.collections.parameters())


def _torchrec_names(names: list[str]) -> dict[str, str]:
    """Each table's name inside the torchrec collections: its own, unless it has a '.' or is
    an attribute of nn.ModuleDict (`items`, `keys`, ...), which a ModuleDict cannot hold."""
    out: dict[str, str] = {}
    for i, name in enumerate(names):
        safe = name
        while "." in safe or hasattr(_EMPTY, safe) or safe in out.values() or (safe != name and safe in names):
            safe = f"table{i}_{safe.replace('.', '_')}"
        out[name] = safe
    return out


def _waited(out):
    """A sharded collection returns an awaitable; an unsharded one the result itself."""
    return out.wait() if callable(getattr(type(out), "wait", None)) else out
