"""The feature map Z(θ) for a fixed batch x, with its Jacobian J_Z = ∂vec(Z)/∂θ as operators.

J_Z v is a forward-mode product (torch.func.jvp, or a torch.func.linearize trace reused for
every Krylov product of one outer step); J_Zᵀ E is a reverse-mode product (torch.func.vjp, the
closure reused as well). θ travels as a flat float64 vector; the network runs in its own dtype.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import jvp, linearize, vjp

from .head import HeadSplit
from .params import ParamLayout


class FeatureMap:
    """θ ↦ Z(θ) ∈ R^{n×m} on a fixed batch x."""

    def __init__(self, split: HeadSplit, x: Tensor, jvp_mode: str = "jvp") -> None:
        if jvp_mode not in ("jvp", "linearize"):
            raise ValueError(f"jvp_mode must be 'jvp' or 'linearize', got {jvp_mode!r}")
        self.split = split
        self.x = x
        self.layout = ParamLayout.of(split.feature_params())
        first = next(iter(split.feature_params().values()))
        self.dtype = first.dtype
        self.jvp_mode = jvp_mode

    def _f(self, params: dict[str, Tensor]) -> Tensor:
        return self.split.features(params, self.x)

    def params(self, theta: Tensor) -> dict[str, Tensor]:
        return self.layout.unflatten(theta, self.dtype)

    def __call__(self, theta: Tensor) -> Tensor:
        with torch.no_grad():
            return self._f(self.params(theta))

    def with_vjp(self, theta: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """Z(θ) and E ↦ J_Zᵀ E (flat float64), reusable any number of times."""
        z, pullback = vjp(self._f, self.params(theta))

        def vjp_fn(E: Tensor) -> Tensor:
            (grads,) = pullback(E.to(z.dtype))
            return self.layout.flatten(grads, torch.float64)

        return z, vjp_fn

    def jvp_fn(self, theta: Tensor) -> Callable[[Tensor], Tensor]:
        """v ↦ J_Z v ∈ R^{n×m} (float64) at θ."""
        p = self.params(theta)
        if self.jvp_mode == "linearize":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                _, lin = linearize(self._f, p)
            return lambda v: lin(self.layout.unflatten(v, self.dtype)).to(torch.float64)

        def apply(v: Tensor) -> Tensor:
            _, dz = jvp(self._f, (p,), (self.layout.unflatten(v, self.dtype),))
            return dz.to(torch.float64)

        return apply
