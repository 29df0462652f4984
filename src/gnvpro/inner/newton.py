"""Newton's method for the convex inner problem W*(θ) = argmin_W Φ(W) (classification losses).

Φ(W) = (1/n) L(Ẑ Wᵀ, C) + (α_W/2) ‖W‖_F²,   ∇_W Φ = Gᵀ Ẑ / n + α_W W,
H_W[V] = H_S[Ẑ Vᵀ]ᵀ Ẑ / n + α_W V   (SPD for α_W > 0),

with L, G and H_S the loss's sums and per-row terms (gnvpro.losses); every sum over samples is
averaged by the SampleReducer (``reducer.mean``/``reducer.scale``, n the global sample count).

vec(W) is always the row-major flattening W.reshape(-1) of the (c, p) matrix: entry (k, j) sits at
position k·p + j. Small problems (c·p ≤ dense_max) form H_W densely (gnvpro.inner.hessian) and
factor it by Cholesky, or, where forming it costs more than 16 products, precondition CG on the
matrix-free H_W with a nearby factor; larger ones use (block-Jacobi-preconditioned) conjugate
gradients on the matrix-free H_W.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from gnvpro.inner.base import InnerSolution
from gnvpro.inner.hessian import dense_hessian, hessian_apply, hessian_operator
from gnvpro.linalg.cg import pcg
from gnvpro.losses import Loss
from gnvpro.reduce import SampleReducer

__all__ = ["solve_newton", "hessian_apply", "dense_hessian"]

_C1 = 1e-4  # Armijo constant
_MAX_BACKTRACK = 60
_MAX_EXTEND = 6  # doublings of an accepted full Newton step (_extend_step)
_BLOCK_PRECOND_ELEMS = 2**25  # largest c·p² for the block-Jacobi CG preconditioner
_REUSE_CG = 8  # PCG products with a reused factor before it is dropped as stale (was 12;
# docs/results.md, "Inexact inner solves and a reused factor")
_RESIDUAL_FLOOR = 0.5  # the last inexact Newton step: ‖H_W d + ∇Φ‖ ≤ tol/2 suffices (was tol/10)
_REUSE_MIN = 16  # reuse a factor when forming H_W costs ≥ this many H_W products
_FORCING_MAX = 0.5  # inexact Newton: ‖H_W d + ∇Φ‖ ≤ min(0.5, √(‖∇Φ‖/‖∇Φ(0)‖))·‖∇Φ‖


def _preconditioner(
    loss: Loss, S: Tensor, Zh: Tensor, alpha_w: float, reducer: SampleReducer
) -> Callable[[Tensor], Tensor] | None:
    """Block-Jacobi preconditioner R ↦ [B_k⁻¹ r_k]_k for CG on H_W.

    B_k = Ẑᵀ diag(a_k) Ẑ / n + α_W I is the k-th diagonal (p × p) block of H_W, with
    a = d − u∘u from the loss's Hessian factors (1 for least squares, σ(1−σ) logistic,
    p_k(1−p_k) cross-entropy); it captures the ill-conditioning of the features. Falls back to
    the diagonal of H_W when the c blocks would exceed 2^25 entries (or a block is not
    numerically SPD); None for a loss without Hessian factors.
    """
    p = Zh.shape[1]
    factors = loss.hessian_factors(S)
    if factors is None:
        return None
    D, U = factors
    a = D if U is None else D - U * U
    c = a.shape[1]
    if c * p * p <= _BLOCK_PRECOND_ELEMS:
        blocks = reducer.mean(torch.stack([(Zh * a[:, k : k + 1]).T @ Zh for k in range(c)]))
        blocks.diagonal(dim1=1, dim2=2).add_(alpha_w)
        L, info = torch.linalg.cholesky_ex(blocks)
        if int(info.max()) == 0:

            def block_solve(R: Tensor) -> Tensor:
                return torch.cholesky_solve(R.reshape(c, p, 1), L).reshape(R.shape)

            return block_solve
    diag = reducer.mean(a.T @ Zh.square()) + alpha_w
    if not bool((diag > 0).all()):
        return None

    def diag_solve(R: Tensor) -> Tensor:
        return (R.reshape(c, p) / diag).reshape(R.shape)

    return diag_solve


def _cholesky_shifted(H: Tensor) -> Tensor:
    """Cholesky factor of H, adding a growing multiple of I if H is not numerically SPD."""
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) == 0:
        return L
    if not bool(torch.isfinite(H).all()):
        raise FloatingPointError("H_W contains NaN/Inf; check the features Ẑ and alpha_w")
    scale = float(H.diagonal().abs().max()) or 1.0
    tau = 1e-14 * scale
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    for _ in range(20):
        L, info = torch.linalg.cholesky_ex(H + tau * eye)
        if int(info) == 0:
            return L
        tau *= 10.0
    raise FloatingPointError("could not factor H_W even after shifting it by 1e6·max|diag H_W|")


class _Lazy:
    """make(), evaluated on the first call and cached (``formed``: whether it was)."""

    def __init__(self, make: Callable[[], Tensor]) -> None:
        self._make, self._value = make, None

    @property
    def formed(self) -> bool:
        return self._value is not None

    def __call__(self) -> Tensor:
        if self._value is None:
            self._value = self._make()
        return self._value


def _next_factor(exact: _Lazy, kept: Tensor | None) -> Callable[[], Tensor]:
    """The next solve's preconditioner: the factor of H_W at W* once formed (hess_inv formed
    it), else the factor the Newton iteration kept (a nearby W), else the one at W* formed now.
    An outer method that never applies H_W⁻¹ (an L-BFGS direction) thus no longer forms one per
    solve (10-class digits: 0.87 → 0.17 formations per solve, 20.7 → 16.5 ms per iteration;
    docs/results.md, "Inexact inner solves and a reused factor")."""

    def get() -> Tensor:
        return exact() if exact.formed or kept is None else kept

    return get


def _chol_apply(L: Tensor, R: Tensor) -> Tensor:
    """(L Lᵀ)⁻¹ R for R of any shape with L.shape[0] entries (two triangular solves)."""
    y = torch.linalg.solve_triangular(L, R.reshape(-1, 1), upper=False)
    return torch.linalg.solve_triangular(L.mT, y, upper=True).reshape(R.shape)


def _dense_direction(
    apply: Callable[[Tensor], Tensor] | None,
    form: Callable[[], Tensor],
    g: Tensor,
    L: Tensor | None,
    forcing: float,
) -> tuple[Tensor, Tensor | None]:
    """Newton direction d ≈ −H_W⁻¹ g on the dense path; returns (d, the factor to keep).

    With the Cholesky factor L of a nearby H_W: PCG on the exact H_W preconditioned by (L Lᵀ)⁻¹
    until ‖H_W d + g‖ ≤ forcing (an inexact Newton step, Dembo-Eisenstat-Steihaug). When it has
    not got there after _REUSE_CG products the preconditioner is stale: the PCG iterate is still
    the step if its residual is below ‖g‖ (a descent direction, like every CG iterate), and no
    factor is kept (the next iteration forms one); otherwise, or without L, a fresh factor
    L = chol(H_W) at the current W (``form``) gives the exact step d = −(L Lᵀ)⁻¹ g.
    """
    if L is not None and apply is not None:
        res = pcg(apply, -g, forcing, _REUSE_CG, lambda R: _chol_apply(L, R))
        if res.residual <= forcing and not res.negative_curvature:
            return res.x, L
        if not res.negative_curvature and res.residual < float(g.norm()):
            return res.x, None
    L = form()
    return -_chol_apply(L, g), L


def _extend_step(
    phi: Callable[[Tensor, Tensor], float],
    gradient: Callable[[Tensor, Tensor], Tensor],
    scores: Callable[[Tensor], Tensor],
    W: Tensor,
    d: Tensor,
    slope: float,
    accepted: tuple[Tensor, Tensor, float, Tensor],
) -> tuple[Tensor, Tensor, float, Tensor]:
    """After a full Newton step W + d was accepted: while Φ still falls steeply there,
    φ'(t) = ∇Φ(W + t d)ᵀd ≤ φ'(0)/4, try t ← 2t (at most _MAX_EXTEND times), kept while Φ
    decreases. On the exponential tail of a (nearly) separable direction, Φ ≈ a e^{−t}, every
    Newton step has t = 1 and gains only a factor e⁻¹ in ‖∇Φ‖ (α_W = 1e-8: 5–9 such steps per
    solve); doubling covers that distance with a few evaluations of Φ. Returns the accepted
    (W, S, Φ, ∇Φ)."""
    t = 1.0
    best = accepted
    for _ in range(_MAX_EXTEND):
        if not float(torch.sum(best[3] * d)) <= 0.25 * slope:
            break
        t *= 2.0
        W_new = W + t * d
        S_new = scores(W_new)
        f_new = phi(W_new, S_new)
        if not (math.isfinite(f_new) and f_new < best[2]):
            break
        best = (W_new, S_new, f_new, gradient(W_new, S_new))
    return best


def solve_newton(
    loss: Loss,
    Zh: Tensor,
    C: Tensor,
    alpha_w: float,
    reducer: SampleReducer,
    W0: Tensor | None = None,
    rtol: float = 1e-10,
    atol: float = 1e-10,
    max_iter: int = 100,
    dense_max: int = 2000,
    finite: bool = False,
    factor0: Callable[[], Tensor] | None = None,
) -> InnerSolution:
    """Minimise Φ(W) = L(Ẑ Wᵀ, C)/n + (α_W/2)‖W‖_F² by Newton's method, in float64 on Ẑ's
    device (n = reducer.n; every sum over the rows of Ẑ goes through the reducer).

    Step: H_W d = −∇_W Φ. While c·p ≤ dense_max (dense path), when forming H_W costs more than
    16 products with it (``_reuse_pays``: cross-entropy with p(c+1) ≥ 128, logistic with
    p ≥ 64), a Cholesky factor of a nearby H_W (factor0, else the one formed at the first
    iteration) preconditions CG on the exact, matrix-free H_W, stopped at
    ‖H_W d + ∇‖ ≤ max(min(0.5, √(‖∇‖/‖∇Φ(0)‖))·‖∇‖, tol/2) (inexact Newton, superlinear
    to the tolerance tol below: order 1.5, Eisenstat-Walker; tol/2, not tighter: a residual
    below the stopping tolerance is all the last step needs); when that takes more than 8
    products the factor is stale (``_dense_direction``) and H_W is formed and factored afresh at
    the next iterate; an accepted full step is extended (t = 2, 4, …) while Φ keeps falling
    steeply (``_extend_step``). Small heads form and factor H_W at every iteration. Larger c·p:
    block-Jacobi-preconditioned CG on the matrix-free H_W to the residual min(0.5, √‖∇‖)·‖∇‖.
    Globalised by backtracking (halving) until the Armijo condition
    Φ(W + t d) ≤ Φ(W) + 1e-4 t ∇ᵀd holds; in the round-off regime (|∇ᵀd| below ~1e3·eps·|Φ|,
    where Φ cannot resolve the decrease) a step is accepted when it reduces ‖∇_W Φ‖ instead.

    Starts from W0 (warm start) or zeros. Stops when ‖∇_W Φ(W)‖_F ≤ max(atol, rtol·‖∇_W Φ(0)‖_F):
    the relative test is measured against the gradient at W = 0, not at W0, so the tolerance does
    not depend on the warm start. Reaching max_iter (or a failed line search) returns
    converged=False with a message and emits a RuntimeWarning.

    The returned ``hess_inv(V)`` = H_W⁻¹[V] at the returned W (V of shape (c, p) or (c·p,)):
    one Cholesky factor of the exact H_W at W*, formed at the first call and reused (dense; also
    returned as ``factor``, the next solve's factor0), or PCG to relative residual 1e-12
    (c·p > dense_max). factor0: a callable returning the Cholesky factor of H_W at a nearby
    point (a previous InnerSolution.factor; ignored unless (c·p) × (c·p)).
    finite=True: the caller has checked Ẑ and C for NaN/Inf (skips an n×c scan per solve).
    """
    t0 = time.perf_counter()
    if alpha_w < 0:
        raise ValueError(f"alpha_w must be >= 0, got {alpha_w}")
    if Zh.ndim != 2 or C.ndim != 2 or C.shape[0] != Zh.shape[0]:
        raise ValueError(
            f"Ẑ must be (n, p) and C (n, c) with the same n; got Ẑ {tuple(Zh.shape)}, "
            f"C {tuple(C.shape)} (convert targets with loss.prepare_targets)"
        )
    Zh = Zh.detach().to(torch.float64)
    dev = Zh.device
    C = C.detach().to(device=dev, dtype=torch.float64)
    if not finite and not (bool(torch.isfinite(Zh).all()) and bool(torch.isfinite(C).all())):
        raise ValueError(
            "features Ẑ or targets C contain NaN/Inf; the inner solve needs finite data"
        )
    n, p = Zh.shape
    c = C.shape[1]
    alpha = float(alpha_w)
    dense = c * p <= dense_max
    eps = torch.finfo(torch.float64).eps

    if W0 is None:
        W = torch.zeros(c, p, dtype=torch.float64, device=dev)
    else:
        if tuple(W0.shape) != (c, p):
            raise ValueError(f"W0 must have shape (c, p) = {(c, p)}, got {tuple(W0.shape)}")
        W = W0.detach().to(device=dev, dtype=torch.float64).clone()

    def phi(Wm: Tensor, S: Tensor) -> float:
        return float(reducer.mean(loss.value(S, C))) + 0.5 * alpha * float(torch.sum(Wm * Wm))

    def gradient(Wm: Tensor, S: Tensor) -> Tensor:
        return reducer.sum(reducer.scale(loss.grad(S, C)).T @ Zh) + alpha * Wm

    S_zero = torch.zeros(n, c, dtype=torch.float64, device=dev)
    g_zero = reducer.sum(reducer.scale(loss.grad(S_zero, C)).T @ Zh)
    gnorm_ref = float(torch.linalg.norm(g_zero))
    tol = max(atol, rtol * gnorm_ref)
    gnorm_ref = gnorm_ref if gnorm_ref > 0 else 1.0
    reuse = dense and _reuse_pays(loss, S_zero, p)
    L = _reusable_factor(factor0, c * p) if reuse else None

    S = Zh @ W.T
    f = phi(W, S)
    g = gradient(W, S)
    gnorm = float(torch.linalg.norm(g))
    it = 0
    converged = False
    failure = ""
    while True:
        if gnorm <= tol:
            converged = True
            break
        if it >= max_iter:
            failure = f"reached max_iter={max_iter}"
            break
        # Newton direction
        if dense:
            S_fix = S
            # the matrix-free H_W only where a reused factor preconditions CG on it
            apply = hessian_operator(loss, S, C, Zh, alpha, reducer) if L is not None else None

            def form(S_fix: Tensor = S_fix) -> Tensor:
                return _dense_factor(loss, S_fix, C, Zh, alpha, reducer)

            eta = min(_FORCING_MAX, math.sqrt(gnorm / gnorm_ref))
            forcing = max(eta * gnorm, _RESIDUAL_FLOOR * tol)
            d, L = _dense_direction(apply, form, g, L, forcing)
            L = L if reuse else None
        else:
            S_fix = S

            def apply(V: Tensor, S_fix: Tensor = S_fix) -> Tensor:
                return hessian_apply(loss, S_fix, C, Zh, V, alpha, reducer)

            forcing = min(0.5, math.sqrt(gnorm)) * gnorm
            precond = _preconditioner(loss, S, Zh, alpha, reducer)
            d = pcg(apply, -g, forcing, 2 * c * p + 20, precond).x
        slope = float(torch.sum(g * d))
        if not slope < 0:  # cannot happen for an SPD H; guard against round-off
            d, slope = -g, -(gnorm**2)
        roundoff = abs(slope) <= 1e3 * eps * max(1.0, abs(f))
        t = 1.0
        accepted = False
        for _ in range(_MAX_BACKTRACK):
            W_new = W + t * d
            S_new = Zh @ W_new.T
            f_new = phi(W_new, S_new)
            if math.isfinite(f_new) and f_new <= f + _C1 * t * slope:
                g_new = gradient(W_new, S_new)
                accepted = True
                break
            if roundoff:
                g_new = gradient(W_new, S_new)
                if float(torch.linalg.norm(g_new)) < gnorm:
                    accepted = True
                    break
            t *= 0.5
        if not accepted:
            failure = "the line search failed to decrease Φ (round-off limit reached)"
            break
        if reuse and t == 1.0 and not roundoff:
            W_new, S_new, f_new, g_new = _extend_step(
                phi, gradient, lambda Wm: Zh @ Wm.T, W, d, slope, (W_new, S_new, f_new, g_new)
            )
        W, S, f, g = W_new, S_new, f_new, g_new
        gnorm = float(torch.linalg.norm(g))
        it += 1

    if converged:
        message = f"converged: ‖∇Φ‖ = {gnorm:.2e} ≤ {tol:.2e} after {it} Newton iteration(s)"
    else:
        message = (
            f"Newton did not converge ({failure}): ‖∇Φ‖ = {gnorm:.2e} > tolerance {tol:.2e} "
            f"after {it} iteration(s); increase max_iter, loosen rtol/atol, or increase alpha_w"
        )
        warnings.warn(f"solve_newton ({loss.name}): {message}", RuntimeWarning, stacklevel=2)

    exact = _Lazy(lambda: _dense_factor(loss, S, C, Zh, alpha, reducer)) if dense else None
    hess_inv = _make_hess_inv(loss, S, C, Zh, alpha, exact, reducer)
    return InnerSolution(
        W=W,
        hess_inv=hess_inv,
        factor=None if exact is None else _next_factor(exact, L),
        iterations=it,
        grad_norm=gnorm,
        converged=converged,
        seconds=time.perf_counter() - t0,
        message=message,
    )


def _dense_factor(
    loss: Loss, S: Tensor, C: Tensor, Zh: Tensor, alpha: float, reducer: SampleReducer
) -> Tensor:
    """The Cholesky factor L of H_W at S (dense_hessian, shifted if not numerically SPD)."""
    return _cholesky_shifted(dense_hessian(loss, S, C, Zh, alpha, reducer))


def _reuse_pays(loss: Loss, S: Tensor, p: int) -> bool:
    """Whether PCG with a reused factor is cheaper than forming H_W afresh: the formation costs
    (per sample) c(c+1)/2·p² flops for coupled H_i (cross-entropy), c·p² for diagonal ones and
    c·p products without factors, a product 4·c·p; reuse when the formation costs at least
    16 products (so not for logistic heads narrower than 64 features)."""
    c = S.shape[1]
    factors = loss.hessian_factors(S[:1])
    if factors is None:
        form = 4.0 * c * p * c * p
    else:
        form = (c * (c + 1) / 2 if factors[1] is not None else c) * p * p
    return form >= _REUSE_MIN * 4.0 * c * p


def _reusable_factor(factor0: Callable[[], Tensor] | None, N: int) -> Tensor | None:
    """factor0() if it is an N × N factor (a previous solution's H_W of the same size)."""
    if factor0 is None:
        return None
    L = factor0()
    return L if tuple(L.shape) == (N, N) else None


def _make_hess_inv(
    loss: Loss,
    S: Tensor,
    C: Tensor,
    Zh: Tensor,
    alpha: float,
    factor: Callable[[], Tensor] | None,
    reducer: SampleReducer,
) -> Callable[[Tensor], Tensor]:
    """V ↦ H_W⁻¹[V] at S = Ẑ W*ᵀ (float64): by the dense Cholesky factor (formed at the first
    call, ``factor``) or, without one, by PCG on the matrix-free H_W."""
    c, p = S.shape[1], Zh.shape[1]
    if factor is not None:

        def hess_inv(V: Tensor) -> Tensor:
            return _chol_apply(factor(), V.to(device=Zh.device, dtype=torch.float64))

        return hess_inv

    precond = _preconditioner(loss, S, Zh, alpha, reducer)

    def apply(V: Tensor) -> Tensor:
        return hessian_apply(loss, S, C, Zh, V, alpha, reducer)

    def hess_inv_cg(V: Tensor) -> Tensor:
        b = V.to(device=Zh.device, dtype=torch.float64).reshape(c, p)
        bnorm = float(torch.linalg.norm(b))
        res = pcg(apply, b, 1e-12 * bnorm, 10 * c * p + 100, precond)
        x, rnorm = res.x, res.residual
        if rnorm > 1e-10 * bnorm:
            warnings.warn(
                f"hess_inv: CG reached only relative residual {rnorm / bnorm:.1e} (> 1e-10); "
                f"H_W is badly conditioned, increase alpha_w",
                RuntimeWarning,
                stacklevel=2,
            )
        return x.reshape(V.shape)

    return hess_inv_cg
