"""The embedding optimizer for tables with dense gradients: data-parallel ones.

A data-parallel table is a full copy on every rank, trained by DDP (gradients averaged
over ranks), outside fbgemm's fused backward. This torch optimizer gives it the store's
formulas (`reference_update`, the fused ones) after backward, on the rows whose gradient
is not zero: the rows the global batch read (a zero-gradient row is left alone by sgd and
both Adagrads anyway).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch
from torch import nn

from recemb.storage.optim import EmbeddingOptimizer, reference_update


class RowOptimizer(torch.optim.Optimizer):
    """`settings`' update on each table [rows, dim] of `params`, named `tables` (torchrec's
    names). The state is made up front (so a checkpoint loads into a fresh optimizer) and
    named as fbgemm's fused optimizer names it (`<table>.momentum1`, ...), with the same
    shapes, so a checkpoint moves between data-parallel and sharded plans; Adam also keeps
    its step count per table."""

    def __init__(self, params: Iterable[nn.Parameter], settings: EmbeddingOptimizer, tables: list[str]) -> None:
        params = list(params)
        if len(tables) != len(params):
            raise ValueError(f"RowOptimizer needs one table name per parameter, got {len(tables)} for {len(params)}")
        super().__init__(params, {"lr": settings.lr})
        self.settings = settings
        self._names: dict[nn.Parameter, list[str]] = {}
        for p, table in zip(params, tables):
            shapes = settings.state_shapes(*p.shape)
            self._names[p] = [f"{table}.momentum{i + 1}" for i in range(len(shapes))]
            state = self.state[p]
            for name, shape in zip(self._names[p], shapes):
                state[name] = torch.zeros(shape, device=p.device)
            if settings.name == "adam":
                state["step"] = torch.zeros((), dtype=torch.int64)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            settings = dataclasses.replace(self.settings, lr=group["lr"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                rows = p.grad.ne(0).any(dim=1).nonzero().squeeze(1)
                if not rows.numel():
                    continue
                state = self.state[p]
                step = 0
                if "step" in state:
                    state["step"] += 1
                    step = int(state["step"])
                reference_update(settings, p.data, p.grad, rows, [state[n] for n in self._names[p]], step)
