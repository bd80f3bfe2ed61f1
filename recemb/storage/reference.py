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
    post-accumulate-grad hook, so, like the TBE store, weights change inside backward."""

    def __init__(self, layout: StoreLayout, optimizer: EmbeddingOptimizer, seed: int = 0) -> None:
        super().__init__(layout, optimizer, seed)
        init = self.initial_weights()
        self.weights = nn.ParameterDict({t.name: nn.Parameter(init[t.name]) for t in layout.tables})
        self.states = {t.name: [torch.zeros(s) for s in optimizer.state_shapes(t.rows, t.dim)] for t in layout.tables}
        self.steps = {t.name: 0 for t in layout.tables}  # Adam's bias-correction step, per table
        self._seen: dict[str, list[Tensor]] = {t.name: [] for t in layout.tables}
        for name, param in self.weights.items():
            param.register_post_accumulate_grad_hook(self._make_hook(name))

    def _make_hook(self, name: str):
        def hook(param: nn.Parameter) -> None:
            seen = self._seen[name]
            if seen and param.grad is not None:
                self.steps[name] += 1
                rows = torch.unique(torch.cat(seen))
                reference_update(self.optimizer, param.data, param.grad, rows, self.states[name], self.steps[name])
            self._seen[name] = []
            param.grad = None

        return hook

    def lookup(self, kjt: KeyedJaggedTensor) -> Tensor:
        batch = kjt.stride()
        parts = []
        for lk, jt in zip(self.layout.lookups, (kjt[k] for k in self.layout.keys)):
            weight = self.weights[lk.table]
            ids = jt.values().long()
            if torch.is_grad_enabled() and self.training:
                self._seen[lk.table].append(ids)
            if lk.pooling == "none":
                parts.append(self._padded(weight, ids, jt.lengths(), batch, lk.max_len).flatten(1))
            else:
                offsets = jt.offsets().long()
                parts.append(F.embedding_bag(ids, weight, offsets, mode=lk.pooling, include_last_offset=True))
        return torch.cat(parts, dim=1)

    @staticmethod
    def _padded(weight: Tensor, ids: Tensor, lengths: Tensor, batch: int, max_len: int) -> Tensor:
        """[B, max_len, D]: item j of sample b at [b, j], zeros past the sample's length."""
        sample = torch.repeat_interleave(torch.arange(batch), lengths.long())
        starts = torch.cumsum(lengths.long(), 0) - lengths.long()
        position = torch.arange(ids.numel()) - starts[sample]
        out = weight.new_zeros(batch, max_len, weight.shape[1])
        return out.index_put((sample, position), F.embedding(ids, weight))

    def table_weights(self) -> dict[str, Tensor]:
        return {name: p.detach().clone() for name, p in self.weights.items()}

    @torch.no_grad()
    def load_table_weights(self, weights: dict[str, Tensor]) -> None:
        for name, p in self.weights.items():
            p.copy_(weights[name])

    def optimizer_states(self) -> dict[str, list[Tensor]]:
        return {name: [s.clone() for s in states] for name, states in self.states.items()}

    def load_optimizer_states(self, states: dict[str, list[Tensor]]) -> None:
        for name, own in self.states.items():
            for s, loaded in zip(own, states[name]):
                s.copy_(loaded)

    def fused_parameters(self) -> list[nn.Parameter]:
        return list(self.weights.values())
