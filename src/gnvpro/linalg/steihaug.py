"""Steihaug–Toint truncated conjugate gradients for the trust-region subproblem.

    minimise m(s) = gᵀs + ½ sᵀHs  subject to ||s|| ≤ Δ,

H symmetric, given only as a matvec. CG on H s = −g from s = 0; on negative curvature pᵀHp ≤ 0
or when the next iterate would leave the ball, step along p to the boundary and stop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SteihaugResult", "steihaug_cg"]


@dataclass
class SteihaugResult:
    """Result of :func:`steihaug_cg`.

    Attributes:
        s: the step (dtype/device of g).
        n_products: number of ``apply_H`` calls.
        on_boundary: ||s|| = Δ (negative curvature or boundary crossing).
        pred: predicted reduction −(gᵀs + ½ sᵀHs) (≥ 0 up to rounding),
            from the tracked H s (no extra product).
        relres: ||H s + g||/||g||.
        iterations: CG iterations (= n_products).
        negative_curvature: stopped on pᵀHp ≤ 0.
    """

    s: Tensor
    n_products: int
    on_boundary: bool
    pred: float
    relres: float
    iterations: int
    negative_curvature: bool = False


def _to_boundary(s: Tensor, p: Tensor, radius: float) -> float:
    """τ ≥ 0 with ||s + τp|| = Δ (given ||s|| ≤ Δ), via the stable quadratic formula."""
    a = float(p @ p)
    b = 2.0 * float(s @ p)
    c = float(s @ s) - radius * radius
    c = min(c, 0.0)
    disc = math.sqrt(max(b * b - 4.0 * a * c, 0.0))
    if b > 0.0:
        return -2.0 * c / (b + disc) if b + disc > 0.0 else 0.0
    return (-b + disc) / (2.0 * a)


def steihaug_cg(
    apply_H: Callable[[Tensor], Tensor],
    g: Tensor,
    radius: float,
    max_iter: int,
    rtol: float,
) -> SteihaugResult:
    """Steihaug–Toint CG for min gᵀs + ½ sᵀHs, ||s|| ≤ radius, from s = 0.

    Stops on pᵀHp ≤ 0 (step to the boundary along p), when s + αp would leave the ball (step to
    the boundary), when ||Hs + g|| ≤ rtol·||g||, or after max_iter products. Note the sign: g is
    the gradient, so the step solves H s ≈ −g. With radius = inf and negative curvature the
    current iterate is returned.
    """
    if g.dim() != 1:
        raise ValueError("steihaug_cg expects a 1-D gradient")
    if not radius > 0.0:
        raise ValueError(f"radius must be > 0, got {radius}")
    s = torch.zeros_like(g)
    Hs = torch.zeros_like(g)
    gnorm = float(torch.linalg.vector_norm(g))
    if gnorm == 0.0 or max_iter <= 0:
        return SteihaugResult(
            s=s,
            n_products=0,
            on_boundary=False,
            pred=0.0,
            relres=0.0 if gnorm == 0.0 else 1.0,
            iterations=0,
        )
    r = g.clone()  # r = H s + g
    p = -r
    rr = gnorm * gnorm
    n_products = 0
    on_boundary = False
    neg = False
    for _ in range(max_iter):
        Hp = apply_H(p).to(dtype=g.dtype)
        n_products += 1
        kappa = float(p @ Hp)
        if kappa <= 0.0:
            neg = True
            if math.isfinite(radius):
                tau = _to_boundary(s, p, radius)
                s = s + tau * p
                Hs = Hs + tau * Hp
                on_boundary = True
            break
        alpha = rr / kappa
        s_next = s + alpha * p
        if float(torch.linalg.vector_norm(s_next)) >= radius:
            tau = _to_boundary(s, p, radius)
            s = s + tau * p
            Hs = Hs + tau * Hp
            on_boundary = True
            break
        s = s_next
        Hs = Hs + alpha * Hp
        r = r + alpha * Hp
        rr_new = float(r @ r)
        if math.sqrt(rr_new) <= rtol * gnorm:
            break
        p = -r + (rr_new / rr) * p
        rr = rr_new
    pred = -float(g @ s + 0.5 * (s @ Hs))
    relres = float(torch.linalg.vector_norm(Hs + g)) / gnorm
    return SteihaugResult(
        s=s,
        n_products=n_products,
        on_boundary=on_boundary,
        pred=pred,
        relres=relres,
        iterations=n_products,
        negative_curvature=neg,
    )
