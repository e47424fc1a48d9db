"""Model state and batch chunking while scores run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

BYTES_PER_MB = 2**20


@contextlib.contextmanager
def scoring_mode(model: nn.Module) -> Iterator[None]:
    """Run the block with every submodule in eval mode and autograd recording disabled.

    Eval mode turns off dropout and batch statistics, so the decoder is the deterministic
    ``f(z)`` that the scores assume. The training flag of each submodule is restored on
    exit, even if the flags were mixed. ``torch.no_grad`` keeps parameter gradients out,
    and the ``torch.func`` transforms that the scores use still differentiate inside it.
    """
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in flags:
            module.training = training


def chunk_size(bytes_per_item: int, memory_budget_mb: float) -> int:
    """Return how many items of ``bytes_per_item`` bytes fit into ``memory_budget_mb`` MiB, at least 1."""
    budget = memory_budget_mb * BYTES_PER_MB
    return max(1, int(budget // max(1, bytes_per_item)))


def batch_slices(batch: int, size: int) -> Iterator[slice]:
    """Yield consecutive slices of at most ``size`` items that cover ``range(batch)``."""
    for start in range(0, batch, size):
        yield slice(start, min(start + size, batch))
