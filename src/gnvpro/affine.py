"""The affine head S = Ẑ Wᵀ shared by the reduced (varpro) and the joint objectives.

Rows are samples: features Z ∈ R^{n×m}, Ẑ = [Z, 1] ∈ R^{n×p} (p = m + 1 with a bias, p = m
without), head W = [W̃, b] ∈ R^{c×p}; a feature perturbation dZ enters as dẐ = [dZ, 0].
"""

from __future__ import annotations

import torch
from torch import Tensor

from .head import HeadSplit

__all__ = ["AffineHead"]


class AffineHead:
    """Shapes of the head W ∈ R^{c×p} and the feature augmentation Ẑ = [Z, 1] (float64).

    Attributes:
        m: number of features (the head's in_features).
        c: number of outputs (the head's out_features).
        bias: whether the head has a bias (Ẑ then carries a ones column).
        p: m + bias, the columns of Ẑ and of W.
    """

    def __init__(self, n_features: int, n_outputs: int, bias: bool) -> None:
        self.m, self.c, self.bias = int(n_features), int(n_outputs), bool(bias)
        self.p = self.m + int(self.bias)

    @classmethod
    def from_split(cls, split: HeadSplit) -> AffineHead:
        """The head of a split model."""
        return cls(split.n_features, split.n_outputs, split.has_bias)

    @property
    def w_shape(self) -> tuple[int, int]:
        """(c, p): the shape of W = [W̃, b]."""
        return (self.c, self.p)

    def augment(self, Z: Tensor) -> Tensor:
        """Ẑ = [Z, 1] in float64 (no ones column for a head without bias)."""
        Z = Z.to(torch.float64)
        if self.bias:
            Z = torch.cat([Z, torch.ones(Z.shape[0], 1, dtype=Z.dtype, device=Z.device)], 1)
        return Z

    def pad(self, dZ: Tensor) -> Tensor:
        """dẐ = [dZ, 0]: the ones column is never perturbed."""
        return torch.nn.functional.pad(dZ, (0, 1)) if self.bias else dZ

    def __repr__(self) -> str:
        return f"AffineHead(m={self.m}, c={self.c}, bias={self.bias})"
