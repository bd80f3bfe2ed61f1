"""The reference store: plain PyTorch, one parameter per table. It defines correctness."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.storage.base import EmbeddingStore
from recemb.storage.layout import StoreLayout
from recemb.storage.optim import EmbeddingOptimizer, reference_update


class ReferenceStore(EmbeddingStore):
    """Per-key `F.embedding_bag` / `F.embedding` lookups; the optimizer runs in a
    post-accumulate-grad hook, so, like the TBE store, weights change inside backward.

    The rows a step updates are those whose lookup output received a gradient in that
    backward (recorded by a hook on the output), as fbgemm updates the rows of the
    indices its backward sees. A forward whose output never reaches a backward leaves
    no trace. As with TBE, each backward is one optimizer step on the gradient summed
    over everything that backward covers.
    """

    def __init__(self, layout: StoreLayout, optimizer: EmbeddingOptimizer, seed: int = 0) -> None:
        super().__init__(layout, optimizer, seed)
        init = self.initial_weights()
        # a list, not a dict keyed by table name: any name (with dots, or 'items') must work
        self.index = {t.name: i for i, t in enumerate(layout.tables)}
        self.weights = nn.ParameterList([nn.Parameter(init[t.name]) for t in layout.tables])
        self.states = {t.name: [torch.zeros(s) for s in optimizer.state_shapes(t.rows, t.dim)] for t in layout.tables}
        self.steps = {t.name: 0 for t in layout.tables}  # Adam's bias-correction step, per table
        self._seen: dict[str, list[Tensor]] = {t.name: [] for t in layout.tables}
        for t in layout.tables:
            self.weights[self.index[t.name]].register_post_accumulate_grad_hook(self._make_update(t.name))

    def _make_update(self, name: str):
        def update(param: nn.Parameter) -> None:
            seen, self._seen[name] = self._seen[name], []
            if seen and param.grad is not None:
                self.steps[name] += 1
                rows = torch.unique(torch.cat(seen))
                reference_update(self.optimizer, param.data, param.grad, rows, self.states[name], self.steps[name])
            param.grad = None

        return update

    def _record_on_backward(self, part: Tensor, table: str, ids: Tensor) -> None:
        if part.requires_grad:
            part.register_hook(lambda grad: self._seen[table].append(ids))

    def lookup(self, kjt: KeyedJaggedTensor) -> Tensor:
        batch = kjt.stride()
        parts = []
        for lk, jt in zip(self.layout.lookups, (kjt[k] for k in self.layout.keys)):
            weight = self.weights[self.index[lk.table]]
            ids = jt.values().long()
            if lk.pooling == "none":
                part = self._padded(weight, ids, jt.lengths(), batch, lk.max_len).flatten(1)
            else:
                offsets = jt.offsets().long()
                part = F.embedding_bag(ids, weight, offsets, mode=lk.pooling, include_last_offset=True)
            self._record_on_backward(part, lk.table, ids)
            parts.append(part)
        return torch.cat(parts, dim=1)

    @staticmethod
    def _padded(weight: Tensor, ids: Tensor, lengths: Tensor, batch: int, max_len: int) -> Tensor:
        """[B, max_len, D]: item j of sample b at [b, j], zeros past the sample's length."""
        lengths = lengths.long()
        sample = torch.repeat_interleave(torch.arange(batch), lengths)
        starts = torch.cumsum(lengths, 0) - lengths
        position = torch.arange(ids.numel()) - starts[sample]
        out = weight.new_zeros(batch, max_len, weight.shape[1])
        return out.index_put((sample, position), F.embedding(ids, weight))

    def table_weights(self) -> dict[str, Tensor]:
        return {name: self.weights[i].detach().clone() for name, i in self.index.items()}

    @torch.no_grad()
    def load_table_weights(self, weights: dict[str, Tensor]) -> None:
        for name, i in self.index.items():
            self.weights[i].copy_(weights[name])

    def optimizer_states(self) -> dict[str, list[Tensor]]:
        return {name: [s.clone() for s in states] for name, states in self.states.items()}

    def load_optimizer_states(self, states: dict[str, list[Tensor]]) -> None:
        for name, own in self.states.items():
            self.check_state_count(name, own, states[name])
            for s, loaded in zip(own, states[name]):
                s.copy_(loaded)

    def optimizer_steps(self) -> dict[str, int]:
        return dict(self.steps)

    def load_optimizer_steps(self, steps: dict[str, int]) -> None:
        self.steps.update(steps)

    def fused_parameters(self) -> list[nn.Parameter]:
        return list(self.weights)
