"""Fully connected networks (e.g. the ellipse toy of the paper: 2→4→4→2 tanh features, then the
affine head).

    z_0 = x,   z_{l+1} = σ(z_l A_lᵀ + a_l)  (l < L),   output = z_L Wᵀ + w

Weights N(0, 2/fan_in), biases zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["mlp"]

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    activation: str = "tanh",
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
    *,
    zero_head: bool = False,
    device: torch.device | str | None = None,
) -> nn.Sequential:
    """``Linear(in, h1), σ, Linear(h1, h2), σ, …, Linear(h_L, out)`` as an ``nn.Sequential``.

    Every hidden layer is followed by ``activation`` ("tanh" or "relu"); the last module is the
    affine head ``nn.Linear(h_L, out_features)`` (``seq[:-1]`` is the feature map).  Weights
    N(0, 2/fan_in) (the head too, unless ``zero_head``), biases zero.  The ellipse toy network is
    ``mlp(2, [4, 4, 2], 1)``.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"mlp: activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
        )
    sizes = [int(in_features), *(int(h) for h in hidden), int(out_features)]
    if any(s < 1 for s in sizes):
        raise ValueError(f"mlp: layer sizes must be >= 1, got {sizes}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        lin = nn.Linear(a, b, dtype=dtype, device=device)
        is_head = i == len(sizes) - 2
        with torch.no_grad():
            if is_head and zero_head:
                lin.weight.zero_()
            else:
                draw = torch.randn(lin.weight.shape, generator=generator, dtype=dtype)
                lin.weight.copy_(draw.to(lin.weight.device) * math.sqrt(2.0 / a))
            lin.bias.zero_()
        layers.append(lin)
        if not is_head:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)
