"""Exact solution of a small dense trust-region subproblem (Moré–Sorensen via eigh).

    minimise m(z) = gᵀz + ½ zᵀTz  subject to ||z|| ≤ Δ,

T symmetric (k×k, possibly singular or indefinite). The solution satisfies
(T + λI) z = −g, λ ≥ 0, λ(||z|| − Δ) = 0, T + λI ⪰ 0. With T = Q diag(d) Qᵀ and γ = Qᵀg,
z(λ) = −Σ γ_i/(d_i + λ) q_i, and on the boundary λ solves the secular equation
1/||z(λ)|| − 1/Δ = 0 (concave, increasing for λ > −d_min) by safeguarded Newton/bisection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .lanczos import pinv_solve

__all__ = [
    "TRSolution",
    "newton_step_in_subspace",
    "solve_tr_subproblem",
    "tr_step_in_subspace",
]

_F64 = torch.float64
_EPS = torch.finfo(_F64).eps


@dataclass
class TRSolution:
    """Result of :func:`solve_tr_subproblem`.

    Attributes:
        z: minimiser (float64, length k).
        lam: Lagrange multiplier λ ≥ 0, (T + λI) z = −g.
        on_boundary: ||z|| = Δ (λ > 0, or the hard case).
        pred: predicted reduction −m(z) = −(gᵀz + ½ zᵀTz) ≥ 0.
        hard_case: the solution used an eigenvector of the smallest eigenvalue (g ⟂ it).
        iterations: root-finding iterations used.
    """

    z: Tensor
    lam: float
    on_boundary: bool
    pred: float
    hard_case: bool = False
    iterations: int = 0


def _model(d: Tensor, gt: Tensor, w: Tensor) -> float:
    """m = γᵀw + ½ Σ d_i w_i² in the eigenbasis (w = Qᵀz)."""
    return float(gt @ w + 0.5 * (d * w * w).sum())


def solve_tr_subproblem(
    T: Tensor,
    g: Tensor,
    radius: float,
    *,
    max_iter: int = 200,
    rtol: float = 1e-12,
) -> TRSolution:
    """Globally minimise gᵀz + ½ zᵀTz over ||z|| ≤ radius, T small dense symmetric.

    Eigendecomposition T = Q diag(d) Qᵀ, γ = Qᵀg; eigenvalues within 10·k·eps·max|d| of the
    lowest shifted one are treated as equal (set J). Cases:
      * T ⪰ 0 and the minimum-norm minimiser −T⁺g (with γ_J ≈ 0) has norm ≤ radius: return it,
        λ = 0, on_boundary False;
      * hard case (T indefinite, γ_J ≈ 0, ||z(−d_min)|| ≤ radius): λ = −d_min,
        z = z(λ) + τ q_min with ||z|| = radius;
      * otherwise λ = λ_low + μ, μ > 0 the root of 1/||z(λ)|| − 1/radius (Newton, bisection
        safeguard, relative accuracy ``rtol``), λ_low = max(0, −d_min).
    """
    T = torch.as_tensor(T).to(device="cpu", dtype=_F64)
    g = torch.as_tensor(g).to(device="cpu", dtype=_F64).reshape(-1)
    k = g.shape[0]
    if T.shape != (k, k):
        raise ValueError(f"T has shape {tuple(T.shape)}, g has length {k}")
    if not radius >= 0.0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    gnorm = float(torch.linalg.vector_norm(g))
    if k == 0 or radius == 0.0:
        return TRSolution(z=torch.zeros(k, dtype=_F64), lam=0.0, on_boundary=k > 0, pred=0.0)

    d, Q = torch.linalg.eigh(0.5 * (T + T.T))
    gt = Q.T @ g
    dmax = float(d.abs().max())
    tol_d = 10.0 * k * _EPS * dmax
    dmin = float(d[0])
    lam_low = 0.0 if dmin >= -tol_d else -dmin
    shifted = (d + lam_low).clamp_min(0.0)
    J = shifted <= tol_d
    shifted[J] = 0.0
    gJ = float(torch.linalg.vector_norm(gt[J])) if bool(J.any()) else 0.0
    negligible = gJ <= 1e-10 * gnorm
    c = gt.clone()
    if negligible:
        c[J] = 0.0  # treat g ⟂ the lowest eigenspace (roundoff level)

    def w_of(mu: float) -> Tensor:
        den = shifted + mu
        w = torch.zeros_like(c)
        nz = c != 0.0
        w[nz] = -c[nz] / den[nz]
        return w

    def finish(w: Tensor, lam: float, on_boundary: bool, hard: bool, it: int) -> TRSolution:
        nrm = float(torch.linalg.vector_norm(w))
        if nrm > radius:
            w = w * (radius / nrm)
        pred = max(-_model(d, gt, w), 0.0)
        return TRSolution(
            z=Q @ w, lam=lam, on_boundary=on_boundary, pred=pred, hard_case=hard, iterations=it
        )

    if negligible:
        w0 = w_of(0.0)
        n0 = float(torch.linalg.vector_norm(w0))
        if n0 <= radius:
            if lam_low == 0.0:
                return finish(w0, 0.0, n0 >= radius * (1.0 - 1e-12), False, 0)
            # hard case: move along the lowest eigenvector to the boundary, downhill in γ
            i0 = int(torch.argmin(d))
            tau = math.sqrt(max(radius * radius - n0 * n0, 0.0))
            w = w0.clone()
            w[i0] = w[i0] - tau * (1.0 if float(gt[i0]) >= 0.0 else -1.0)
            return finish(w, lam_low, True, True, 0)

    # boundary: find μ > 0 with ||w(μ)|| = radius; phi(μ) = 1/||w|| − 1/radius is concave ↑
    cnorm = float(torch.linalg.vector_norm(c))
    lo, hi = 0.0, cnorm / radius  # ||w(μ)|| ≤ ||c||/μ, so phi(hi) ≥ 0
    mu = hi
    it = 0
    while it < max_iter:
        it += 1
        den = shifted + mu
        w = w_of(mu)
        n = float(torch.linalg.vector_norm(w))
        if n == 0.0:
            phi = math.inf
        else:
            phi = 1.0 / n - 1.0 / radius
        if abs(n - radius) <= rtol * radius:
            break
        if phi < 0.0:
            lo = mu
        else:
            hi = mu
        if hi - lo <= 4.0 * _EPS * hi:
            break
        # Newton: phi'(μ) = Σ c_i²/den_i³ / n³
        nz = c != 0.0
        n3 = n**3  # underflows to 0 for ‖w‖ < 1e-103 (a collapsed radius): bisect then
        dphi = float((c[nz] ** 2 / den[nz] ** 3).sum()) / n3 if n3 > 0.0 else 0.0
        mu_new = mu - phi / dphi if dphi > 0.0 and math.isfinite(phi) else -1.0
        mu = mu_new if lo < mu_new < hi else 0.5 * (lo + hi)
    w = w_of(mu)
    return finish(w, lam_low + mu, True, False, it)


def newton_step_in_subspace(T: Tensor, beta0: float) -> Tensor:
    """Unconstrained (Galerkin) step coordinates z = T⁺ (β_0 e_1), float64 length k.

    For a basis from ``lanczos(apply_H, b=-grad, ...)`` the full step is ``basis.expand(z)``.
    """
    k = T.shape[0]
    rhs = torch.zeros(k, dtype=_F64)
    if k > 0:
        rhs[0] = beta0
    return pinv_solve(T, rhs)


def tr_step_in_subspace(T: Tensor, beta0: float, radius: float) -> TRSolution:
    """Trust-region step in a Lanczos basis built from b = −grad.

    The projected gradient is Vg = −β_0 e_1, so this is
    ``solve_tr_subproblem(T, -beta0 * e1, radius)``; the full step is ``basis.expand(sol.z)``
    and ``sol.pred`` = −gᵀs − ½ sᵀHs of that full step.
    """
    k = T.shape[0]
    g = torch.zeros(k, dtype=_F64)
    if k > 0:
        g[0] = -beta0
    return solve_tr_subproblem(T, g, radius)
