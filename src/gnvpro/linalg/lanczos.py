"""Lanczos with full reorthogonalisation for a symmetric positive semi-definite operator.

Given a matvec ``apply_H`` and a starting vector ``b`` (1-D tensors), builds an orthonormal basis
V = [v_1, ..., v_k]ᵀ of the Krylov space K_k(H, b) with v_1 = b/||b|| and the tridiagonal
projection T = V H Vᵀ, so that H Vᵀ = Vᵀ T + β_{k+1} v_{k+1} e_kᵀ.  The Galerkin (CG) solution of
H x = b in that space is x_k = Vᵀ y with T y = β_0 e_1, and its residual is

    H x_k − b = Vᵀ (T y − β_0 e_1) + β_{k+1} (e_kᵀ y) v_{k+1},

whose norm is read off without extra products (the first term vanishes when T is nonsingular).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

__all__ = ["KrylovBasis", "lanczos", "pinv_solve"]

_F64 = torch.float64


def pinv_solve(T: Tensor, rhs: Tensor) -> Tensor:
    """Minimum-norm least-squares solution y = T⁺ rhs of a small symmetric system (float64).

    Uses the eigendecomposition T = Q diag(d) Qᵀ and drops eigenvalues with
    |d_i| ≤ 10·k·eps·max|d|, so it equals T⁻¹ rhs for nonsingular, reasonably conditioned T.
    """
    T = T.to(_F64)
    rhs = rhs.to(_F64)
    k = T.shape[0]
    if k == 0:
        return rhs.new_zeros(0)
    d, Q = torch.linalg.eigh(0.5 * (T + T.T))
    dmax = float(d.abs().max())
    tol = 10.0 * k * torch.finfo(_F64).eps * dmax
    keep = d.abs() > tol
    c = Q.T @ rhs
    coef = torch.zeros_like(c)
    coef[keep] = c[keep] / d[keep]
    return Q @ coef


@dataclass
class KrylovBasis:
    """Result of :func:`lanczos`.

    Attributes:
        V: (k, N) orthonormal rows, dtype/device of ``b``; v_1 = b/||b||.
        T: (k, k) float64 CPU symmetric tridiagonal, T = V H Vᵀ (alphas on the diagonal).
        beta0: ||b||.
        relres: ||H x_k − b||/||b|| of the Galerkin solution x_k = Vᵀ T⁺(β_0 e_1).
        converged: relres < rtol.
        n_products: number of ``apply_H`` calls made.
        relres_history: relres after each added vector.
        beta_next: β_{k+1}, the norm of the part of H v_k outside span(V) (0 at breakdown).
        breakdown: stopped because an invariant subspace was found.
    """

    V: Tensor
    T: Tensor
    beta0: float
    relres: float
    converged: bool
    n_products: int
    relres_history: list[float] = field(default_factory=list)
    beta_next: float = 0.0
    breakdown: bool = False

    @property
    def k(self) -> int:
        """Number of basis vectors."""
        return int(self.V.shape[0])

    @property
    def rhs(self) -> Tensor:
        """β_0 e_1 (float64, length k): the coordinates of b in the basis, Vb."""
        e = torch.zeros(self.k, dtype=_F64)
        if self.k > 0:
            e[0] = self.beta0
        return e

    def galerkin(self) -> Tensor:
        """Coordinates y = T⁺ (β_0 e_1) (float64, length k) of the Galerkin solution x_k = Vᵀ y."""
        return pinv_solve(self.T, self.rhs)

    def expand(self, z: Tensor) -> Tensor:
        """s = Vᵀ z ∈ R^N for coordinates z (length k), in the dtype/device of V."""
        z = torch.as_tensor(z).to(dtype=self.V.dtype, device=self.V.device)
        if z.shape != (self.k,):
            raise ValueError(f"expected coordinates of shape ({self.k},), got {tuple(z.shape)}")
        return z @ self.V


def _relres(alphas: list[float], betas: list[float], beta0: float, beta_next: float) -> float:
    """||T y − β_0 e_1||² + (β_{k+1} e_kᵀ y)², square-rooted and divided by β_0, y = T⁺ β_0 e_1
    (T tridiagonal from alphas/betas; numpy: a k×k eigh costs less than torch's call overhead)."""
    k = len(alphas)
    T = np.diag(np.asarray(alphas, dtype=np.float64))
    if betas:
        off = np.asarray(betas, dtype=np.float64)
        T += np.diag(off, 1) + np.diag(off, -1)
    d, Q = np.linalg.eigh(T)
    tol = 10.0 * k * np.finfo(np.float64).eps * float(np.abs(d).max())
    keep = np.abs(d) > tol
    c = Q[0] * beta0  # Qᵀ (β_0 e_1)
    coef = np.zeros(k)
    coef[keep] = c[keep] / d[keep]
    y = Q @ coef
    rhs = np.zeros(k)
    rhs[0] = beta0
    inner = float(np.linalg.norm(T @ y - rhs))
    outer = beta_next * abs(float(y[-1]))
    return math.hypot(inner, outer) / beta0


def lanczos(
    apply_H: Callable[[Tensor], Tensor],
    b: Tensor,
    max_iter: int,
    rtol: float,
) -> KrylovBasis:
    """Lanczos on a symmetric PSD operator with full reorthogonalisation (CGS twice).

    Builds V (k ≤ min(max_iter, N) orthonormal rows, v_1 = b/||b||) and T = V H Vᵀ. After each
    vector, relres = sqrt(||T y − β_0 e_1||² + (β_{k+1} e_kᵀ y)²)/β_0 with y = T⁺ β_0 e_1, which is
    ||H Vᵀy − b||/||b|| exactly in exact arithmetic. Stops when relres < rtol, at max_iter vectors,
    or at breakdown β_{k+1} ≤ max(1e-14, eps_dtype)·scale (scale = max ||H v_j|| seen), where
    β_{k+1} is then taken as 0. b = 0 gives an empty basis (k = 0, relres 0, converged).
    """
    if b.dim() != 1:
        raise ValueError("lanczos expects a 1-D right-hand side")
    N = b.shape[0]
    beta0 = float(torch.linalg.vector_norm(b))
    m = min(int(max_iter), N)
    empty = KrylovBasis(
        V=b.new_zeros((0, N)),
        T=torch.zeros((0, 0), dtype=_F64),
        beta0=beta0,
        relres=0.0 if beta0 == 0.0 else 1.0,
        converged=beta0 == 0.0,
        n_products=0,
    )
    if beta0 == 0.0 or not math.isfinite(beta0) or m <= 0:
        return empty

    brk_tol = max(1e-14, torch.finfo(b.dtype).eps)
    V = b.new_zeros((m, N))
    V[0] = b / beta0
    alphas: list[float] = []
    betas: list[float] = []  # betas[j] couples v_{j+1} and v_{j+2} (0-based: V[j], V[j+1])
    history: list[float] = []
    scale = 0.0
    n_products = 0
    relres = 1.0
    beta_next = 0.0
    breakdown = False
    k = 0
    for j in range(m):
        w = apply_H(V[j])
        n_products += 1
        if w.shape != (N,):
            raise ValueError(f"apply_H returned shape {tuple(w.shape)}, expected ({N},)")
        w = w.to(dtype=b.dtype)
        scale = max(scale, float(torch.linalg.vector_norm(w)))
        Vj = V[: j + 1]
        h = Vj @ w
        alphas.append(float(h[j]))
        w = w - h @ Vj
        w = w - (Vj @ w) @ Vj  # second Gram-Schmidt pass
        beta_next = float(torch.linalg.vector_norm(w))
        k = j + 1
        if beta_next <= brk_tol * scale:
            beta_next = 0.0
            breakdown = True
        relres = _relres(alphas, betas, beta0, beta_next)
        history.append(relres)
        if relres < rtol or breakdown or k == m:
            break
        V[k] = w / beta_next
        betas.append(beta_next)

    T = torch.diag(torch.tensor(alphas, dtype=_F64))
    if betas:  # k − 1 couplings: the loop appends one per vector it adds after the first
        off = torch.tensor(betas, dtype=_F64)
        T = T + torch.diag(off, 1) + torch.diag(off, -1)

    return KrylovBasis(
        V=V[:k],
        T=T,
        beta0=beta0,
        relres=relres,
        converged=relres < rtol,
        n_products=n_products,
        relres_history=history,
        beta_next=beta_next,
        breakdown=breakdown,
    )
