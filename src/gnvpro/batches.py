"""Batch schedules for gnvpro.loop.fit."""

from __future__ import annotations

import torch
from torch import Tensor

from .validate import check_real

__all__ = ["fixed_batches"]


def fixed_batches(x: Tensor, y: Tensor, n_batches: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    """A seeded random partition of (x, y) into n_batches near-equal batches (the paper's fixed
    sub-batches); 1 <= n_batches <= len(x), an integer, checked (never clamped)."""
    n_batches = check_real("n_batches", n_batches, integer=True, low=1)
    seed = check_real("seed", seed, integer=True, low=0)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}: they must match")
    if n_batches > len(x):
        raise ValueError(f"n_batches={n_batches} exceeds the {len(x)} samples: every batch needs "
                         "at least one sample")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(seed)))
    perm = perm.to(x.device)
    return [(x[idx], y[idx]) for idx in torch.tensor_split(perm, n_batches)]
