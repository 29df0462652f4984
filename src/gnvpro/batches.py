"""Batch schedules for gnvpro.loop.fit."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["fixed_batches"]


def fixed_batches(x: Tensor, y: Tensor, n_batches: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    """A seeded random partition of (x, y) into min(n_batches, len(x)) near-equal batches (the
    paper's fixed sub-batches)."""
    if n_batches < 1:
        raise ValueError(f"n_batches must be >= 1, got {n_batches}")
    n_batches = min(n_batches, len(x))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(seed)))
    perm = perm.to(x.device)
    return [(x[idx], y[idx]) for idx in torch.tensor_split(perm, n_batches)]
