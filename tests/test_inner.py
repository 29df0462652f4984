"""Inner solvers: closed-form least squares and Newton's method for the classifiers.

Every solver takes the SampleReducer averaging over the samples: here _r(Ẑ), the mean over Ẑ's
rows (the losses return sums; tests/test_reduce.py covers other reducers).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from gnvpro.inner import (
    InnerSolution,
    dense_hessian,
    hessian_apply,
    solve_inner,
    solve_least_squares,
    solve_newton,
)
from gnvpro.losses import make_loss
from gnvpro.reduce import SampleReducer

DT = torch.float64


def _r(Zh: torch.Tensor) -> SampleReducer:
    """The mean over the rows of Ẑ."""
    return SampleReducer(len(Zh))


def _features(n: int, m: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    Z = scale * torch.randn(n, m, generator=gen, dtype=DT)
    return torch.cat([Z, torch.ones(n, 1, dtype=DT)], dim=1)


def _problem(name: str, n: int = 150, m: int = 4, c: int = 3, seed: int = 0, noise: float = 1.0):
    """Ẑ (ones column last) and float targets C; labels of a noisy linear model (not separable)."""
    loss = make_loss(name)
    Zh = _features(n, m, seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    if name == "logistic":
        c = 1
    Wt = torch.randn(max(c, 2), m + 1, generator=gen, dtype=DT)
    scores = Zh @ Wt.T + noise * torch.randn(n, max(c, 2), generator=gen, dtype=DT)
    if name == "least_squares":
        y = scores[:, :c]
    elif name == "cross_entropy":
        y = scores.argmax(dim=1)
    else:
        y = (scores[:, 0] > 0).to(torch.int64)
    C = loss.prepare_targets(y, c).to(DT)
    return loss, Zh, C


def _grad_W(loss, Zh, C, W, alpha):
    """∇_W Φ = Gᵀ Ẑ / n + α_W W (the loss's G is per row, unnormalised)."""
    return loss.grad(Zh @ W.T, C).T @ Zh / len(Zh) + alpha * W


def _hess_matrix_by_columns(loss, S, C, Zh, alpha):
    N = S.shape[1] * Zh.shape[1]
    eye = torch.eye(N, dtype=DT)
    R = _r(Zh)
    return torch.stack([hessian_apply(loss, S, C, Zh, eye[i], alpha, R) for i in range(N)], dim=1)


# ----------------------------------------------------------------------------- least squares


@pytest.mark.parametrize("alpha", [1e-3, 0.5])
def test_least_squares_matches_lstsq(alpha: float) -> None:
    loss, Zh, C = _problem("least_squares", n=40, m=6, c=3)
    n, p = Zh.shape
    sol = solve_least_squares(Zh, C, alpha, _r(Zh))
    assert isinstance(sol, InnerSolution)
    A = np.vstack([Zh.numpy() / np.sqrt(n), np.sqrt(alpha) * np.eye(p)])
    B = np.vstack([C.numpy() / np.sqrt(n), np.zeros((p, C.shape[1]))])
    Wt_ref = np.linalg.lstsq(A, B, rcond=None)[0]
    np.testing.assert_allclose(sol.W.numpy(), Wt_ref.T, rtol=1e-12, atol=1e-12)
    assert sol.W.dtype == DT and sol.W.shape == (3, p)
    assert sol.iterations == 0 and sol.converged and sol.seconds >= 0
    g = _grad_W(loss, Zh, C, sol.W, alpha)
    assert float(g.norm()) < 1e-13
    assert sol.grad_norm == pytest.approx(float(g.norm()), abs=1e-14)  # both at round-off
    assert "Cholesky" in sol.message


def test_least_squares_svd_fallback_rank_deficient() -> None:
    # alpha = 0 and a duplicated feature column: Gram is singular; expect the minimum-norm solution
    _, Zh, C = _problem("least_squares", n=30, m=3, c=2)
    Zh = torch.cat([Zh[:, :1], Zh], dim=1)
    sol = solve_least_squares(Zh, C, 0.0, _r(Zh))
    assert "SVD" in sol.message
    W_ref = np.linalg.lstsq(Zh.numpy(), C.numpy(), rcond=None)[0].T
    np.testing.assert_allclose(sol.W.numpy(), W_ref, rtol=1e-10, atol=1e-10)
    # alpha = 1e-13 > 0: Cholesky is rejected (cond ~ 1e13); the SVD result is the min-norm one up
    # to O(alpha), with equal weights on the two identical columns (no round-off blow-up along
    # the null direction, where a normal-equation or augmented solve picks up ~1e-3 noise)
    sol = solve_least_squares(Zh, C, 1e-13, _r(Zh))
    assert "SVD" in sol.message
    np.testing.assert_allclose(sol.W.numpy(), W_ref, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(sol.W[:, 0], sol.W[:, 1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n", [40, 5])  # n < p: thin SVD, Gram⁻¹ needs the null-space term
def test_least_squares_svd_path_forced(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    import gnvpro.inner.least_squares as ls_mod

    loss, Zh, C = _problem("least_squares", n=n, m=7, c=2, seed=4)
    alpha = 1e-2
    ref = solve_least_squares(Zh, C, alpha, _r(Zh))
    assert "Cholesky" in ref.message
    monkeypatch.setattr(ls_mod, "_COND_MAX", 1.0)
    sol = solve_least_squares(Zh, C, alpha, _r(Zh))
    assert "SVD" in sol.message
    torch.testing.assert_close(sol.W, ref.W, rtol=1e-11, atol=1e-12)
    assert sol.grad_norm < 1e-12
    _check_hess_inv(loss, Zh, C, sol, alpha)


def _check_hess_inv(loss, Zh, C, sol, alpha, rtol=1e-10) -> None:
    gen = torch.Generator().manual_seed(7)
    S = Zh @ sol.W.T
    V = torch.randn(sol.W.shape, generator=gen, dtype=DT)
    X = sol.hess_inv(V)
    assert X.shape == V.shape and X.dtype == DT
    back = hessian_apply(loss, S, C, Zh, X, alpha, _r(Zh))
    assert float((back - V).norm() / V.norm()) < rtol
    HV = hessian_apply(loss, S, C, Zh, V, alpha, _r(Zh))
    assert float((sol.hess_inv(HV) - V).norm() / V.norm()) < rtol
    flat = sol.hess_inv(V.reshape(-1))  # flat vec(V) accepted, same ordering
    assert flat.shape == (V.numel(),)
    torch.testing.assert_close(flat, X.reshape(-1), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("alpha", [1e-4, 1.0])
def test_least_squares_hess_inv(alpha: float) -> None:
    loss, Zh, C = _problem("least_squares", n=50, m=5, c=2)
    _check_hess_inv(loss, Zh, C, solve_least_squares(Zh, C, alpha, _r(Zh)), alpha)


# ------------------------------------------------------------------------------ Newton


def _numpy_objective(name: str, Zh: np.ndarray, C: np.ndarray, alpha: float):
    """Φ, ∇Φ and the Hessian of Φ in vec(W) (row-major), written independently in numpy."""
    n, p = Zh.shape
    c = C.shape[1]

    def probs(w):
        S = Zh @ w.reshape(c, p).T
        if name == "logistic":
            return S, 1.0 / (1.0 + np.exp(-S))
        E = np.exp(S - S.max(axis=1, keepdims=True))
        return S, E / E.sum(axis=1, keepdims=True)

    def fun(w):
        S, P = probs(w)
        if name == "logistic":
            L = np.sum(np.logaddexp(0.0, S) - C * S) / n
        else:
            lse = np.log(np.exp(S - S.max(1, keepdims=True)).sum(1)) + S.max(1)
            L = np.sum(lse - np.sum(C * S, axis=1)) / n
        return L + 0.5 * alpha * w @ w

    def jac(w):
        _, P = probs(w)
        return (((P - C).T @ Zh) / n).reshape(-1) + alpha * w

    def hess(w):
        _, P = probs(w)
        H = np.zeros((c * p, c * p))
        for i in range(n):
            A = (
                P[i : i + 1] * (1 - P[i : i + 1])
                if name == "logistic"
                else np.diag(P[i]) - np.outer(P[i], P[i])
            )
            H += np.kron(A, np.outer(Zh[i], Zh[i]))
        return H / n + alpha * np.eye(c * p)

    return fun, jac, hess


@pytest.mark.parametrize("name", ["cross_entropy", "logistic"])
def test_newton_matches_scipy(name: str) -> None:
    alpha = 1e-3
    loss, Zh, C = _problem(name, n=120, m=4, c=3)
    sol = solve_newton(loss, Zh, C, alpha, _r(Zh))
    assert sol.converged, sol.message
    g = _grad_W(loss, Zh, C, sol.W, alpha)
    assert float(g.norm()) <= 1e-10
    assert sol.grad_norm == pytest.approx(float(g.norm()), rel=1e-6, abs=1e-16)
    assert 1 <= sol.iterations < 30 and sol.seconds > 0
    fun, jac, hess = _numpy_objective(name, Zh.numpy(), C.numpy(), alpha)
    res = minimize(
        fun,
        np.zeros(sol.W.numel()),
        jac=jac,
        hess=hess,
        method="trust-exact",
        options={"gtol": 1e-12},
    )
    w = res.x
    for _ in range(3):  # polish the scipy solution with plain numpy Newton steps
        w = w - np.linalg.solve(hess(w), jac(w))
    assert np.linalg.norm(jac(w)) < 1e-12
    assert np.linalg.norm(w - res.x) < 1e-6  # scipy itself was already close
    W_ref = w.reshape(sol.W.shape)
    W_ref = res.x.reshape(sol.W.shape)
    rel = np.linalg.norm(sol.W.numpy() - W_ref) / np.linalg.norm(W_ref)
    assert rel < 1e-7
    # the numpy Hessian (independent formula) equals our dense Hessian at W*
    H = dense_hessian(loss, Zh @ sol.W.T, C, Zh, alpha, _r(Zh))
    np.testing.assert_allclose(H.numpy(), hess(sol.W.numpy().reshape(-1)), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("name", ["cross_entropy", "logistic"])
def test_newton_warm_start(name: str) -> None:
    alpha = 1e-2
    loss, Zh, C = _problem(name, seed=3)
    sol = solve_newton(loss, Zh, C, alpha, _r(Zh))
    warm = solve_newton(loss, Zh, C, alpha, _r(Zh), W0=sol.W)
    assert warm.converged and warm.iterations <= 1
    torch.testing.assert_close(warm.W, sol.W, rtol=1e-9, atol=1e-10)
    # a nearby warm start needs fewer iterations than the cold start
    near = solve_newton(loss, Zh, C, alpha, _r(Zh), W0=sol.W * (1 + 1e-3))
    assert near.converged and near.iterations <= sol.iterations


@pytest.mark.parametrize(
    ("name", "c"), [("cross_entropy", 4), ("logistic", 1), ("least_squares", 2)]
)
def test_dense_hessian_equals_matrix_free(name: str, c: int) -> None:
    alpha = 0.3
    loss, Zh, C = _problem(name, n=37, m=3, c=c, seed=5)
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(C.shape[1], Zh.shape[1], generator=gen, dtype=DT)
    S = Zh @ W.T
    H = dense_hessian(loss, S, C, Zh, alpha, _r(Zh))
    H_cols = _hess_matrix_by_columns(loss, S, C, Zh, alpha)
    torch.testing.assert_close(H, H_cols, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(H, H.T, rtol=0, atol=0)
    assert float(torch.linalg.eigvalsh(H).min()) >= alpha * (1 - 1e-10)
    # row-major vec: H vec(V) = vec(H_W[V])
    V = torch.randn(W.shape, generator=gen, dtype=DT)
    torch.testing.assert_close(
        H @ V.reshape(-1),
        hessian_apply(loss, S, C, Zh, V, alpha, _r(Zh)).reshape(-1),
        rtol=1e-12,
        atol=1e-12,
    )


def test_dense_hessian_chunked_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    import gnvpro.inner.hessian as hessian_mod

    loss, Zh, C = _problem("cross_entropy", n=23, m=2, c=6, seed=9)
    S = torch.randn(23, 6, dtype=DT)
    H_full = dense_hessian(loss, S, C, Zh, 0.1, _r(Zh))
    monkeypatch.setattr(hessian_mod, "_PAIR_CHUNK_ELEMS", 12)  # 2 rows of Q (6 pairs) per chunk
    H_chunked = dense_hessian(loss, S, C, Zh, 0.1, _r(Zh))
    torch.testing.assert_close(H_chunked, H_full, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("name", ["cross_entropy", "logistic"])
def test_dense_hess_inv(name: str) -> None:
    alpha = 1e-3
    loss, Zh, C = _problem(name, seed=11)
    sol = solve_newton(loss, Zh, C, alpha, _r(Zh))
    _check_hess_inv(loss, Zh, C, sol, alpha)


@pytest.mark.parametrize("name", ["cross_entropy", "logistic"])
def test_cg_path_matches_dense(name: str) -> None:
    alpha = 1e-3
    loss, Zh, C = _problem(name, n=200, m=6, c=4, seed=2)
    dense = solve_newton(loss, Zh, C, alpha, _r(Zh))
    cg = solve_newton(loss, Zh, C, alpha, _r(Zh), dense_max=0)
    assert cg.converged, cg.message
    assert cg.grad_norm <= 1e-10
    rel = float((cg.W - dense.W).norm() / dense.W.norm())
    assert rel < 1e-8
    _check_hess_inv(loss, Zh, C, cg, alpha)


def test_least_squares_through_newton_is_one_step() -> None:
    alpha = 1e-2
    loss, Zh, C = _problem("least_squares", n=60, m=5, c=2)
    ref = solve_least_squares(Zh, C, alpha, _r(Zh))
    for dense_max in (2000, 0):
        sol = solve_newton(loss, Zh, C, alpha, _r(Zh), dense_max=dense_max)
        assert sol.converged
        torch.testing.assert_close(sol.W, ref.W, rtol=1e-9, atol=1e-10)
    assert solve_newton(loss, Zh, C, alpha, _r(Zh)).iterations == 1


def test_max_iter_reports_non_convergence() -> None:
    # separable, badly scaled data and a tiny alpha: Newton needs many steps
    n, m = 80, 3
    Zh = _features(n, m, seed=4, scale=20.0)
    loss = make_loss("logistic")
    C = loss.prepare_targets((Zh[:, 0] + 0.3 * Zh[:, 1] > 0).to(torch.int64))
    with pytest.warns(RuntimeWarning, match="did not converge"):
        sol = solve_newton(loss, Zh, C, 1e-8, _r(Zh), max_iter=1)
    assert not sol.converged
    assert sol.iterations == 1
    assert "max_iter=1" in sol.message and "did not converge" in sol.message
    assert sol.grad_norm > 1e-10
    # hess_inv is still provided at the returned iterate
    _check_hess_inv(loss, Zh, C.to(DT), sol, 1e-8, rtol=1e-6)


def test_float32_inputs_are_solved_in_float64() -> None:
    alpha = 1e-3
    for name in ("cross_entropy", "least_squares"):
        loss, Zh, C = _problem(name, seed=8)
        sol64 = solve_inner(loss, Zh, C, alpha, _r(Zh))
        sol32 = solve_inner(loss, Zh.float(), C.float(), alpha, _r(Zh), W0=None)
        assert sol32.W.dtype == DT
        assert sol32.hess_inv(torch.ones(sol32.W.shape, dtype=torch.float32)).dtype == DT
        g = _grad_W(loss, Zh.float().double(), C.float().double(), sol32.W, alpha)
        assert float(g.norm()) <= 1e-10
        torch.testing.assert_close(sol32.W, sol64.W, rtol=1e-4, atol=1e-5)
    loss, Zh, C = _problem("logistic", seed=8)
    W0 = torch.zeros(1, Zh.shape[1], dtype=torch.float32)
    sol = solve_newton(loss, Zh.float(), C.float(), alpha, _r(Zh), W0=W0)
    assert sol.W.dtype == DT and sol.converged


def test_relative_tolerance_is_measured_at_zero() -> None:
    alpha = 1e-3
    loss, Zh, C = _problem("cross_entropy", seed=6)
    g0 = float(_grad_W(loss, Zh, C, torch.zeros(3, Zh.shape[1], dtype=DT), alpha).norm())
    sol = solve_newton(loss, Zh, C, alpha, _r(Zh), rtol=1e-3, atol=0.0)
    assert sol.converged and sol.grad_norm <= 1e-3 * g0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a converged solve emits no warning
        solve_newton(loss, Zh, C, alpha, _r(Zh), W0=sol.W, rtol=1e-3, atol=0.0)


def test_input_validation() -> None:
    loss, Zh, C = _problem("cross_entropy")
    with pytest.raises(ValueError, match="W0 must have shape"):
        solve_newton(loss, Zh, C, 1e-3, _r(Zh), W0=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="same n"):
        solve_newton(loss, Zh[:-1], C, 1e-3, _r(Zh[:-1]))
    with pytest.raises(ValueError, match="n = "):
        solve_least_squares(Zh[:-1], C, 1e-3, _r(Zh[:-1]))
    with pytest.raises(ValueError, match="alpha_w"):
        solve_least_squares(Zh, C, -1.0, _r(Zh))
    bad = Zh.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        solve_newton(loss, bad, C, 1e-3, _r(bad))
    with pytest.raises(ValueError, match="NaN/Inf"):
        solve_least_squares(bad, C, 1e-3, _r(bad))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_solvers_on_cuda() -> None:
    for name in ("least_squares", "cross_entropy", "logistic"):
        loss, Zh, C = _problem(name, seed=12)
        ref = solve_inner(loss, Zh, C, 1e-3, _r(Zh))
        Z32 = Zh.cuda().float()
        sol = solve_inner(loss, Z32, C.cuda().float(), 1e-3, _r(Z32))
        assert sol.W.is_cuda and sol.W.dtype == DT
        torch.testing.assert_close(sol.W.cpu(), ref.W, rtol=1e-4, atol=1e-5)
        # H_W⁻¹ is the inverse of the Hessian of the problem solved: float32 Ẑ, in float64
        Zs = Z32.to(DT)
        V = torch.randn(sol.W.shape, dtype=DT, device="cuda")
        back = hessian_apply(loss, Zs @ sol.W.T, C.cuda(), Zs, sol.hess_inv(V), 1e-3, _r(Zs))
        assert float((back - V).norm() / V.norm()) < 1e-8
        cg = solve_newton(loss, Zh.cuda(), C.cuda(), 1e-3, _r(Zh), dense_max=0)
        torch.testing.assert_close(cg.W.cpu(), ref.W, rtol=1e-7, atol=1e-8)


# ------------------------------------------------------------- structured H_W, reused factors
def _kron_hessian(loss, S, Zh, alpha) -> torch.Tensor:
    """Σ_i H_i ⊗ ẑ_i ẑ_iᵀ / n + α_W I term by term (H_i = diag d_i − u_i u_iᵀ)."""
    D, U = loss.hessian_factors(S)
    H = sum(torch.kron(torch.diag(D[i]) - torch.outer(U[i], U[i]), torch.outer(Zh[i], Zh[i]))
            for i in range(len(Zh)))
    return H / len(Zh) + alpha * torch.eye(H.shape[0], dtype=DT)


@pytest.mark.parametrize(("c", "m"), [(6, 4), (3, 4), (6, 70)])
def test_coupled_hessian_is_the_kronecker_sum(c: int, m: int) -> None:
    """Both formations of a coupled H_W (distinct entries Q Aᵀ for c ≥ 6, p ≤ 64; one product
    per block k ≤ l otherwise) equal Σ_i (diag p_i − p_i p_iᵀ) ⊗ ẑ_i ẑ_iᵀ/n + α I."""
    loss, Zh, C = _problem("cross_entropy", n=29, m=m, c=c, seed=21)
    S = torch.randn(29, c, generator=torch.Generator().manual_seed(3), dtype=DT)
    H = dense_hessian(loss, S, C, Zh, 0.2, _r(Zh))
    torch.testing.assert_close(H, _kron_hessian(loss, S, Zh, 0.2), rtol=1e-13, atol=1e-14)
    assert torch.equal(H, H.T)


@pytest.mark.parametrize("name", ["cross_entropy", "logistic", "least_squares"])
def test_hessian_operator_taylor_and_adjoint(name: str) -> None:
    """V ↦ H_W[V] with the factors taken once: equals hessian_apply, is self-adjoint, and is
    the derivative of ∇_W Φ (Taylor test: ‖∇Φ(W + hV) − ∇Φ(W) − h H_W[V]‖ = O(h²))."""
    import gnvpro.inner.newton as newton_mod
    from gnvpro.checks import adjoint_test, taylor_test

    alpha = 1e-2
    loss, Zh, C = _problem(name, n=60, m=4, c=3, seed=22)
    gen = torch.Generator().manual_seed(4)
    W = torch.randn(C.shape[1], Zh.shape[1], generator=gen, dtype=DT)
    V, U = (torch.randn(W.shape, generator=gen, dtype=DT) for _ in range(2))
    S = Zh @ W.T
    apply = newton_mod.hessian_operator(loss, S, C, Zh, alpha, _r(Zh))
    torch.testing.assert_close(apply(V), hessian_apply(loss, S, C, Zh, V, alpha, _r(Zh)),
                               rtol=1e-14, atol=1e-15)
    assert apply(V.reshape(-1)).shape == (V.numel(),)
    assert adjoint_test(apply, apply, V, U) < 1e-13
    res = taylor_test(lambda X: _grad_W(loss, Zh, C, X, alpha), W, V, apply(V), h0=0.5, n=8)
    if name == "least_squares":  # ∇Φ is linear in W: E1 is round-off only
        assert max(res.e1) < 1e-13
    else:
        assert res.best_order() > 1.9, res.orders


@pytest.mark.parametrize(
    ("name", "c", "p", "pays"),
    [("cross_entropy", 10, 33, True), ("cross_entropy", 3, 5, False), ("logistic", 1, 33, False),
     ("logistic", 1, 65, True), ("least_squares", 2, 200, True)],
)
def test_factor_reuse_rule(name: str, c: int, p: int, pays: bool) -> None:
    """Reuse when forming H_W costs ≥ 16 products: p(c+1) ≥ 128 coupled, p ≥ 64 diagonal."""
    import gnvpro.inner.newton as newton_mod

    assert newton_mod._reuse_pays(make_loss(name), torch.zeros(3, c, dtype=DT), p) is pays


def _count_hessians(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    import gnvpro.inner.newton as newton_mod

    calls = [0]
    real = newton_mod.dense_hessian

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(newton_mod, "dense_hessian", counted)
    return calls


def _reuse_problem(seed: int = 23):
    """Cross-entropy with c = 8, p = 16 (p(c+1) = 144: the reuse path) and a perturbed Ẑ."""
    loss, Zh, C = _problem("cross_entropy", n=300, m=15, c=8, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    Zh1 = Zh.clone()
    Zh1[:, :-1] += 0.05 * torch.randn(Zh.shape[0], Zh.shape[1] - 1, generator=gen, dtype=DT)
    return loss, Zh, Zh1, C


def test_reused_factor_meets_the_same_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """A solve preconditioned by the previous solution's factor forms no H_W, converges to the
    same test and to the fresh-Newton W*; H_W⁻¹ is the exact inverse at W*, formed lazily once."""
    import gnvpro.inner.newton as newton_mod

    alpha = 1e-3
    loss, Zh, Zh1, C = _reuse_problem()
    sol0 = solve_newton(loss, Zh, C, alpha, _r(Zh))
    sol0.factor()
    calls = _count_hessians(monkeypatch)
    sol1 = solve_newton(loss, Zh1, C, alpha, _r(Zh1), W0=sol0.W, factor0=sol0.factor)
    assert calls[0] == 0 and sol1.converged and sol1.iterations > 0, sol1.message
    tol = 1e-10 * float(_grad_W(loss, Zh1, C, torch.zeros_like(sol1.W), alpha).norm())
    assert float(_grad_W(loss, Zh1, C, sol1.W, alpha).norm()) <= max(tol, 1e-10)
    _check_hess_inv(loss, Zh1, C, sol1, alpha)
    assert calls[0] == 1  # formed at the first H_W⁻¹, then reused
    monkeypatch.setattr(newton_mod, "_reuse_pays", lambda *a: False)
    fresh = solve_newton(loss, Zh1, C, alpha, _r(Zh1), W0=sol0.W)
    assert fresh.iterations == sol1.iterations or abs(fresh.iterations - sol1.iterations) <= 2
    rel = float((sol1.W - fresh.W).norm() / fresh.W.norm())
    assert rel < 1e-7, rel


def test_the_next_factor_is_the_kept_one_until_h_w_inverse_forms_the_exact_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A solution whose H_W⁻¹ was never applied (an L-BFGS direction) hands the next solve the
    factor its Newton iteration kept, forming nothing; once H_W⁻¹ formed the factor at W*, that
    one. Solves chained this way form no H_W and meet the same test as fresh ones."""
    alpha = 1e-3
    loss, Zh, Zh1, C = _reuse_problem(seed=26)
    sol0 = solve_newton(loss, Zh, C, alpha, _r(Zh))
    L0 = sol0.factor()  # formed at W*(Zh) (no factor was kept: it formed one at W = 0)
    calls = _count_hessians(monkeypatch)
    sol1 = solve_newton(loss, Zh1, C, alpha, _r(Zh1), W0=sol0.W, factor0=sol0.factor)
    assert sol1.factor() is L0 and calls[0] == 0  # the kept factor, nothing formed
    sol2 = solve_newton(loss, Zh, C, alpha, _r(Zh), W0=sol1.W, factor0=sol1.factor)
    assert calls[0] == 0 and sol2.converged and sol2.iterations > 0
    assert float((sol2.W - sol0.W).norm() / sol0.W.norm()) < 1e-7
    _check_hess_inv(loss, Zh1, C, sol1, alpha)  # forms the exact factor at W*(Zh1) …
    assert calls[0] == 1 and sol1.factor() is not L0  # … which is now the next one
    assert torch.allclose(sol1.factor() @ sol1.factor().mT,
                          dense_hessian(loss, Zh1 @ sol1.W.T, C, Zh1, alpha, _r(Zh1)),
                          rtol=1e-10, atol=1e-12)


def test_stale_or_misshaped_factor(monkeypatch: pytest.MonkeyPatch) -> None:
    """A factor of a very different H_W (PCG stalls: H_W is formed afresh) or of another size
    (ignored) changes nothing but the cost: same test, same W*."""
    alpha = 1e-3
    loss, Zh, Zh1, C = _reuse_problem(seed=24)
    ref = solve_newton(loss, Zh1, C, alpha, _r(Zh1))
    N = ref.W.numel()
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    spread = torch.logspace(-6, 6, N, dtype=DT)[perm]
    bad = torch.diag(spread.sqrt())  # the factor of a wildly wrong diagonal H_W
    calls = _count_hessians(monkeypatch)
    stale = solve_newton(loss, Zh1, C, alpha, _r(Zh1), factor0=lambda: bad)
    assert stale.converged and calls[0] >= 1
    other = solve_newton(loss, Zh1, C, alpha, _r(Zh1), factor0=lambda: torch.eye(3, dtype=DT))
    assert other.converged
    for sol in (stale, other):
        assert sol.grad_norm <= max(1e-10, ref.grad_norm * 1e3)
        assert float((sol.W - ref.W).norm() / ref.W.norm()) < 1e-7


def test_reduced_objective_taylor_with_reused_factor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Φ_red(θ + h v) evaluated as the line search does (warm start and factor from the point θ,
    default tolerance 1e-10, no H_W formed at the trial points h ≤ 0.25; at h = 0.5 the factor
    from θ may be stale and H_W formed once) matches Φ_red(θ) + h ∇Φ_redᵀv to second order over
    h = 0.5 … 0.5/2^13: W* from the reused-factor solve is accurate enough for the envelope
    gradient ∇Φ_red = J_Zᵀ(G W̃) + α_θ θ."""
    from torch import nn

    from gnvpro import ReducedObjective, split_model
    from gnvpro.checks import taylor_test

    gen = torch.Generator().manual_seed(25)
    x = torch.randn(200, 6, generator=gen, dtype=DT)
    y = (x @ torch.randn(6, 8, generator=gen, dtype=DT)).argmax(dim=1)
    y[:8] = torch.arange(8)
    torch.manual_seed(25)
    model = nn.Sequential(nn.Linear(6, 15), nn.Tanh(), nn.Linear(15, 8)).double()
    split = split_model(model, probe=x)
    obj = ReducedObjective(split, make_loss("cross_entropy"), x, y, 1e-3, 1e-4)
    theta = obj.features.layout.flatten(split.feature_params(), DT).detach()
    pt = obj.evaluate(theta)
    g = obj.gradient(pt)
    pt.inner.factor()
    v = torch.randn(theta.shape, generator=gen, dtype=DT)
    v /= v.norm()
    calls = _count_hessians(monkeypatch)
    trials, formed = [], []

    def phi(t: torch.Tensor) -> torch.Tensor:
        before = calls[0]
        trial = obj.evaluate(t, pt, with_vjp=False)
        assert trial.inner.converged
        trials.append(trial.inner.iterations)
        formed.append(calls[0] - before)
        return torch.tensor(trial.value, dtype=DT)

    res = taylor_test(phi, theta, v, g @ v, h0=0.5, n=14)
    # formed[0]: θ itself (taylor_test evaluates it first), formed[1]: h = 0.5
    assert formed[0] == 0 and formed[1] <= 1 and sum(formed[2:]) == 0, formed
    assert sum(trials) > 0
    assert min(res.orders[2:]) > 1.8, res.orders
    bad = taylor_test(phi, theta, v, 1.01 * (g @ v), h0=0.5, n=14)
    assert bad.orders[-1] < 1.2, bad.orders


def test_extended_newton_steps_on_a_nearly_separable_problem(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """α_W = 1e-8, nearly separable classes: Newton steps on the exponential tail gain e⁻¹ each;
    doubling accepted full steps while Φ falls steeply needs fewer Newton iterations and meets
    the same convergence test at the same Φ."""
    import gnvpro.inner.newton as newton_mod

    alpha = 1e-8
    loss, Zh, C = _problem("cross_entropy", n=300, m=15, c=8, seed=26, noise=0.05)
    sols = {}
    for extend in (0, newton_mod._MAX_EXTEND):
        monkeypatch.setattr(newton_mod, "_MAX_EXTEND", extend)
        sols[extend] = solve_newton(loss, Zh, C, alpha, _r(Zh))
    plain, extended = sols[0], sols[newton_mod._MAX_EXTEND]
    for sol in (plain, extended):
        assert sol.converged, sol.message
    assert extended.iterations < plain.iterations, (extended.iterations, plain.iterations)

    def phi(W: torch.Tensor) -> float:
        return float(loss.value(Zh @ W.T, C)) / len(Zh) + 0.5 * alpha * float(W.square().sum())

    assert abs(phi(extended.W) - phi(plain.W)) <= 1e-12 * max(1.0, abs(phi(plain.W))) + 1e-13
