"""The L-BFGS inverse-Hessian approximation, applied by the two-loop recursion.

    H⁰ = γ I, γ = sᵀy / yᵀy of the newest pair;  H_{k+1} = (I − ρ s yᵀ) H_k (I − ρ y sᵀ) + ρ s sᵀ,
    ρ = 1 / (sᵀy), over the stored pairs (s_i, y_i) = (x_{i+1} − x_i, ∇f_{i+1} − ∇f_i).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import Tensor

__all__ = ["curvature_pair", "newest", "two_loop"]


def two_loop(g: Tensor, pairs: Sequence[tuple[Tensor, Tensor, float]]) -> Tensor:
    """H g by the two-loop recursion over pairs (s_i, y_i, 1/(s_iᵀy_i)), oldest first,
    with H⁰ = (sᵀy / yᵀy) I of the newest pair (I without pairs)."""
    q = g.clone()
    alphas = []
    for s, y, rho in reversed(pairs):
        a = rho * float(s @ q)
        q -= a * y
        alphas.append(a)
    if pairs:
        s, y, _ = pairs[-1]
        q *= float(s @ y) / float(y @ y)
    for (s, y, rho), a in zip(pairs, reversed(alphas), strict=True):
        b = rho * float(y @ q)
        q += (a - b) * s
    return q


def curvature_pair(s: Tensor, y: Tensor) -> tuple[Tensor, Tensor, float] | None:
    """(s, y, 1/sᵀy) when sᵀy > 1e-12 ‖s‖‖y‖ (the update keeps H positive definite), else None."""
    sy = float(s @ y)
    if sy > 1e-12 * float(s.norm()) * float(y.norm()):
        return s, y, 1.0 / sy
    return None


def newest(pairs: Iterable[tuple[Tensor, Tensor, float]], new: tuple | None,
           memory: int) -> tuple[tuple[Tensor, Tensor, float], ...]:
    """The last `memory` pairs after appending `new` (if any)."""
    out = tuple(pairs) + ((new,) if new is not None else ())
    return out[-memory:] if memory > 0 else ()
