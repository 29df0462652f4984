"""Preconditioned conjugate gradients for apply(x) = b, from x = 0, any tensor shape.

    r₀ = b,  z = M⁻¹r,  d₀ = z;   x ← x + (rᵀz / dᵀHd) d,  r ← r − (rᵀz / dᵀHd) H d,
    d ← z_new + (r_newᵀ z_new / rᵀz) d,      until ‖r‖ ≤ tol or maxiter products.

Stops early on non-positive curvature dᵀHd ≤ 0 keeping the iterate reached; when no step was
taken at all the result is the preconditioned right-hand side M⁻¹b (a descent direction for
b = −∇f whenever M⁻¹ is positive definite).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CGResult", "pcg"]


@dataclass
class CGResult:
    """x: the iterate; iterations: products with H; residual: ‖b − Hx‖ of the last CG iterate
    (before any fallback); negative_curvature: stopped on dᵀHd ≤ 0."""

    x: Tensor
    iterations: int
    residual: float
    negative_curvature: bool = False


def pcg(
    apply: Callable[[Tensor], Tensor],
    b: Tensor,
    tol: float,
    maxiter: int,
    precond: Callable[[Tensor], Tensor] | None = None,
) -> CGResult:
    """Preconditioned CG for apply(x) = b from x = 0 until ‖r‖ ≤ tol (absolute)."""
    x = torch.zeros_like(b)
    r = b.clone()
    rnorm = float(torch.linalg.norm(r))
    if rnorm <= tol:
        return CGResult(x, 0, rnorm)
    z = precond(r) if precond is not None else r
    d = z.clone()
    rz = torch.sum(r * z)
    it, negative = 0, False
    while it < maxiter:
        it += 1
        Hd = apply(d)
        curv = torch.sum(d * Hd)
        if not float(curv) > 0:  # negative curvature or numerically singular: keep x
            negative = True
            break
        step = rz / curv
        x = x + step * d
        r = r - step * Hd
        rnorm = float(torch.linalg.norm(r))
        if rnorm <= tol:
            break
        z = precond(r) if precond is not None else r
        rz_new = torch.sum(r * z)
        d = z + (rz_new / rz) * d
        rz = rz_new
    if bool((x == 0).all()):  # no progress at all: fall back to the preconditioned residual
        x = precond(b) if precond is not None else b.clone()
    return CGResult(x, it, rnorm, negative)
