"""Closed-form inner solve for the least-squares loss.

Φ(W) = 1/(2n) ‖Ẑ Wᵀ − C‖_F² + (α_W/2) ‖W‖_F²  is minimised by

    W* = (Cᵀ Ẑ / n) Gram⁻¹,   Gram = Ẑᵀ Ẑ / n + α_W I  (p × p),

and its Hessian in W is H_W[V] = V Gram, so H_W⁻¹[V] = V Gram⁻¹. The sums over samples ẐᵀẐ and
CᵀẐ are averaged by the SampleReducer (n: the global sample count, reducer.mean).
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from gnvpro.inner.base import InnerSolution
from gnvpro.reduce import SampleReducer

__all__ = ["solve_least_squares"]

#: Cholesky is abandoned for the SVD when (max diag L / min diag L)² exceeds this estimate of
#: cond(Gram): beyond it the normal equations lose more than ~6 of float64's 16 digits.
_COND_MAX = 1e10


def _as_pair(Zh: Tensor, C: Tensor, finite: bool = False) -> tuple[Tensor, Tensor]:
    if Zh.ndim != 2:
        raise ValueError(f"features Ẑ must have shape (n, p), got {tuple(Zh.shape)}")
    if C.ndim == 1:
        C = C.reshape(-1, 1)
    if C.ndim != 2 or C.shape[0] != Zh.shape[0]:
        raise ValueError(
            f"targets C must have shape (n, c) with n = {Zh.shape[0]} rows like Ẑ, "
            f"got {tuple(C.shape)}"
        )
    if Zh.shape[0] == 0:
        raise ValueError("the inner problem needs at least one sample (n = 0)")
    Zh = Zh.detach().to(torch.float64)
    C = C.detach().to(device=Zh.device, dtype=torch.float64)
    if not finite and not (bool(torch.isfinite(Zh).all()) and bool(torch.isfinite(C).all())):
        raise ValueError(
            "features Ẑ or targets C contain NaN/Inf; the inner solve needs finite data"
        )
    return Zh, C


def _svd(A: Tensor, B: Tensor, reducer: SampleReducer) -> tuple[Tensor, Tensor, Tensor]:
    """Bᵀ U, s, Vᵀ of the thin SVD A = U diag(s) Vᵀ of the rows of A on every process (B: the
    same rows of the targets). One process: torch.linalg.svd of A. Several: TSQR — each
    process factors its rows A_r = Q_r R_r (R_r padded to p × p), the stacked R_r are factored
    [R_0; R_1; …] = Q₂ R, and R = U_R diag(s) Vᵀ, so U = diag(Q_r) Q₂ U_R and
    Bᵀ U = Σ_r (B_rᵀ Q_r Q₂,r) U_R, Q₂,r the p rows of Q₂ of process r."""
    if reducer.parts == 1:
        U, s, Vh = torch.linalg.svd(A, full_matrices=False)
        return B.T @ U, s, Vh
    p = A.shape[1]
    Q, R = torch.linalg.qr(A)  # (rows, k), (k, p), k = min(rows, p)
    k = R.shape[0]
    Q = torch.nn.functional.pad(Q, (0, p - k))  # rows × p; zero columns for the padding
    R = torch.nn.functional.pad(R, (0, 0, 0, p - k))  # p × p; zero rows
    Q2, R_all = torch.linalg.qr(reducer.stack(R))  # (parts·p, p), (p, p): the same everywhere
    U_R, s, Vh = torch.linalg.svd(R_all)
    r = reducer.part
    BQ = reducer.sum(B.T @ Q @ Q2[r * p:(r + 1) * p])
    return BQ @ U_R, s, Vh


def solve_least_squares(Zh: Tensor, C: Tensor, alpha_w: float, reducer: SampleReducer,
                        finite: bool = False) -> InnerSolution:
    """W* = argmin_W 1/(2n)‖Ẑ Wᵀ − C‖² + (α_W/2)‖W‖² in float64, on Ẑ's device.

    n = reducer.n; the normal equations ẐᵀẐ/n and CᵀẐ/n are reducer.mean of the local sums.

    Solved through the Cholesky factor L of Gram = ẐᵀẐ/n + α_W I. The SVD of Ẑ/√n = U diag(s) Vᵀ
    is used instead when Cholesky fails (Gram not numerically positive definite: α_W = 0 with
    rank-deficient features) or when the estimate (max diag L / min diag L)² of cond(Gram)
    exceeds 1e10; then W* = (Cᵀ/√n) U diag(s/(s²+α_W)) Vᵀ (pseudo-inverse for α_W = 0) and
    Gram⁻¹ = V diag(1/(s²+α_W)) Vᵀ + (I − V Vᵀ)/α_W.

    ``hess_inv(V)`` = V Gram⁻¹ for V of shape (c, p) (or any (k, p), or the flat (c·p,) vector),
    reusing the factorisation. ``iterations`` is 0, ``grad_norm`` = ‖(S − C)ᵀẐ/n + α_W W*‖_F.
    finite=True: the caller has checked Ẑ and C for NaN/Inf (skips an n×c scan per solve).
    With rows on several processes (reducer.parts > 1) the SVD fallback is the SVD of the
    R factor of a TSQR of Ẑ/√n (:func:`_tsqr_svd`): the same s, V and CᵀU on every process.
    """
    t0 = time.perf_counter()
    if alpha_w < 0:
        raise ValueError(f"alpha_w must be >= 0, got {alpha_w}")
    Zh, C = _as_pair(Zh, C, finite)
    rows, p = Zh.shape
    n = reducer.n
    alpha = float(alpha_w)
    eye = torch.eye(p, dtype=torch.float64, device=Zh.device)
    gram = reducer.mean(Zh.T @ Zh) + alpha * eye
    gram = 0.5 * (gram + gram.T)
    rhs = reducer.mean(C.T @ Zh)  # (c, p)

    L, info = torch.linalg.cholesky_ex(gram)
    use_svd = bool(info != 0)
    reason = "Cholesky failed"
    if not use_svd:
        d = torch.diagonal(L)
        cond_est = float((d.max() / d.min()) ** 2)
        if not cond_est < _COND_MAX:
            use_svd, reason = True, f"cond(Gram) ≈ {cond_est:.1e} > {_COND_MAX:.0e}"

    if not use_svd:
        W = torch.cholesky_solve(rhs.T, L).T

        def solve_gram(X: Tensor) -> Tensor:  # X (k, p) -> X Gram⁻¹
            return torch.cholesky_solve(X.T, L).T

        message = "closed form (Cholesky of the Gram matrix)"
    else:
        CU, s, Vh = _svd(Zh / n**0.5, C / n**0.5, reducer)
        tol = max(n, p) * torch.finfo(torch.float64).eps * float(s.max()) if s.numel() else 0.0
        keep = s > tol
        s_k, Vh_k = s[keep], Vh[keep]
        W = CU[:, keep] * (s_k / (s_k**2 + alpha)) @ Vh_k
        inv_eig = 1.0 / (s_k**2 + alpha)

        def solve_gram(X: Tensor) -> Tensor:
            XV = X @ Vh_k.T
            if alpha > 0:
                return X / alpha + (XV * (inv_eig - 1.0 / alpha)) @ Vh_k
            return (XV * inv_eig) @ Vh_k  # pseudo-inverse on the range of Ẑᵀ

        message = f"closed form (SVD of Ẑ/√n: {reason})"

    def hess_inv(V: Tensor) -> Tensor:
        """V Gram⁻¹ = H_W⁻¹[V]."""
        X = V.to(device=Zh.device, dtype=torch.float64)
        return solve_gram(X.reshape(-1, p)).reshape(V.shape)

    grad = W @ gram - rhs  # = (Ẑ Wᵀ − C)ᵀẐ/n + α_W W without an n×c temporary
    grad_norm = float(torch.linalg.norm(grad))
    return InnerSolution(
        W=W,
        hess_inv=hess_inv,
        iterations=0,
        grad_norm=grad_norm,
        converged=True,
        seconds=time.perf_counter() - t0,
        message=message,
    )
