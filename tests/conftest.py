"""Shared helpers for the tests: KJTs from plain lists, random batches for a store layout,
and one training step with the optimizer fused into backward.

The helpers are exposed as fixtures (tests/ has no __init__.py, so test files do not
import each other or this file).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recemb.storage import StoreLayout


def kjt_from_lists(bags: dict[str, Sequence[Sequence[int]]], dtype: torch.dtype = torch.int64) -> KeyedJaggedTensor:
    """A KJT from {key: [ids of sample 0, ids of sample 1, ...]}, keys in dict order."""
    sizes = {len(v) for v in bags.values()}
    if len(sizes) != 1:
        raise ValueError(f"every key needs the same number of samples, got {sizes}")
    values = [i for per_key in bags.values() for sample in per_key for i in sample]
    lengths = [len(sample) for per_key in bags.values() for sample in per_key]
    return KeyedJaggedTensor.from_lengths_sync(
        list(bags), torch.tensor(values, dtype=dtype), torch.tensor(lengths, dtype=torch.int64)
    )


def random_bags(
    gen: torch.Generator,
    specs: dict[str, tuple[int, str, int]],
    batch: int,
    max_bag: int = 4,
) -> dict[str, list[list[int]]]:
    """Random ids for {key: (rows, "single" | "multi" | "sequence", max_len)}.

    Multi-hot bags have 0..max_bag ids, sample 0's bag is always empty. Sequences have
    0..max_len ids, sample 0 is empty and sample 1 is full length. Ids are drawn from
    small tables, so duplicates within a batch are the rule.
    """
    out: dict[str, list[list[int]]] = {}
    for key, (rows, kind, max_len) in specs.items():
        samples = []
        for b in range(batch):
            if kind == "single":
                n = 1
            elif kind == "multi":
                n = 0 if b == 0 else int(torch.randint(0, max_bag + 1, (1,), generator=gen))
            else:
                n = 0 if b == 0 else max_len if b == 1 else int(torch.randint(0, max_len + 1, (1,), generator=gen))
            samples.append(torch.randint(0, rows, (n,), generator=gen).tolist())
        out[key] = samples
    return out


def layout_specs(layout: StoreLayout, multi: Sequence[str] = ()) -> dict[str, tuple[int, str, int]]:
    """random_bags specs for a store layout: sequence keys from the layout, the keys in
    `multi` as multi-hot bags, every other key single-valued."""
    specs = {}
    for lk in layout.lookups:
        rows = layout.table(lk.table).rows
        kind = "sequence" if lk.pooling == "none" else "multi" if lk.key in multi else "single"
        specs[lk.key] = (rows, kind, lk.max_len)
    return specs


def backward_random(out: Tensor, gen: torch.Generator) -> Tensor:
    """Backward of sum(out * w) for random output weights w; returns w."""
    w = torch.randn(out.shape, generator=gen)
    (out * w).sum().backward()
    return w


def non_fused_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters a torch optimizer should train: all but the fused store's."""
    fused = {id(p) for p in module.fused_parameters()}  # type: ignore[operator]
    return [p for p in module.parameters() if id(p) not in fused]


@pytest.fixture
def make_kjt() -> Callable[..., KeyedJaggedTensor]:
    return kjt_from_lists


@pytest.fixture
def make_bags() -> Callable[..., dict[str, list[list[int]]]]:
    return random_bags


@pytest.fixture
def specs_of() -> Callable[..., dict[str, tuple[int, str, int]]]:
    return layout_specs


@pytest.fixture
def backward() -> Callable[[Tensor, torch.Generator], Tensor]:
    return backward_random


@pytest.fixture
def trainable() -> Callable[[nn.Module], list[nn.Parameter]]:
    return non_fused_parameters


def pytest_make_parametrize_id(config, val, argname):
    """Readable ids for parametrized keyword arguments: `[rows=0-...]`, not `[kwargs0-...]`."""
    if argname == "kwargs" and isinstance(val, dict):
        return ",".join(f"{k}={v!r}" for k, v in val.items())
    return None
