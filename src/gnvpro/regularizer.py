"""The regulariser on the feature weights, R(θ) = (α_θ/2) ‖B θ‖², B linear.

B is the identity by default, or any linear map of the named parameters (e.g. the forward
differences in time, models.time_smoothness of the experiments). Its adjoint: torch.func.vjp.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import vjp

from .params import ParamLayout

LinearMap = Callable[[dict[str, Tensor]], dict[str, Tensor]]


class Regularizer:
    """R(θ) = (α/2)‖Bθ‖² with gradient α BᵀBθ and Gauss-Newton term α BᵀB v (exact)."""

    def __init__(self, alpha: float, layout: ParamLayout, B: LinearMap | None = None) -> None:
        if alpha < 0:
            raise ValueError(f"alpha_theta must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        self.layout = layout
        self.B = B

    def apply_B(self, theta: Tensor) -> Tensor:
        """Bθ as one flat vector."""
        if self.B is None:
            return theta
        out = self.B(self.layout.unflatten(theta))
        return torch.cat([t.reshape(-1) for t in out.values()])

    def apply_BtB(self, v: Tensor) -> Tensor:
        """BᵀB v."""
        if self.B is None:
            return v
        bv, pullback = vjp(self.apply_B, v)
        return pullback(bv)[0]

    def value(self, theta: Tensor) -> Tensor:
        return 0.5 * self.alpha * self.apply_B(theta).square().sum()

    def gradient(self, theta: Tensor) -> Tensor:
        return self.alpha * self.apply_BtB(theta)

    def gauss_newton(self, v: Tensor) -> Tensor:
        return self.alpha * self.apply_BtB(v)
