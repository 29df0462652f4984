"""The ellipse toy problem (experiments.md section 1): binary classification in 2-D."""

from __future__ import annotations

import math

import torch

from .base import Split

ASPECT = 0.4  # the second coordinate is scaled by this: x = (r cos phi, 0.4 r sin phi)


def ellipse_data(
    n_per_class: int = 7000,
    n_train: int = 5000,
    n_val: int = 1000,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> Split:
    """Points inside (label 1, r ~ U[0,1]) vs. the ring outside (label 0, r ~ U[1,2]) the ellipse.

    Each point is x = (r cos phi, 0.4 r sin phi) with phi ~ U[0, 2 pi]. The 2 * n_per_class
    points are shuffled with a seeded generator; the first ``n_train`` are training data, the
    next ``n_val`` validation, the rest test. Labels are int64 of shape (n,).
    """
    n_total = 2 * n_per_class
    if n_train + n_val > n_total:
        raise ValueError(f"n_train + n_val = {n_train + n_val} exceeds {n_total} points")
    g = torch.Generator().manual_seed(seed)
    r_in = torch.rand(n_per_class, generator=g, dtype=torch.float64)
    r_out = 1.0 + torch.rand(n_per_class, generator=g, dtype=torch.float64)
    r = torch.cat([r_in, r_out])
    phi = 2 * math.pi * torch.rand(n_total, generator=g, dtype=torch.float64)
    x = torch.stack([r * torch.cos(phi), ASPECT * r * torch.sin(phi)], dim=1)
    y = torch.cat(
        [torch.ones(n_per_class, dtype=torch.int64), torch.zeros(n_per_class, dtype=torch.int64)]
    )
    perm = torch.randperm(n_total, generator=g)
    x, y = x[perm].to(dtype), y[perm]
    a, b = n_train, n_train + n_val
    return Split(
        x_train=x[:a],
        y_train=y[:a],
        x_val=x[a:b],
        y_val=y[a:b],
        x_test=x[b:],
        y_test=y[b:],
        meta={"name": "ellipse", "n_classes": 2, "aspect": ASPECT, "seed": seed},
    )
