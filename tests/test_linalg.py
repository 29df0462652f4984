"""Tests of gnvpro.linalg: Lanczos, the exact trust-region subproblem, Steihaug–Toint CG."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from gnvpro.linalg import (
    KrylovBasis,
    lanczos,
    newton_step_in_subspace,
    solve_tr_subproblem,
    steihaug_cg,
    tr_step_in_subspace,
)

F64 = torch.float64


def _spd(n: int, lo: float, hi: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))
    d = torch.linspace(lo, hi, n, dtype=F64)
    return (Q * d) @ Q.T


def _sym_with_eigs(d: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    n = d.shape[0]
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))
    return (Q * d) @ Q.T, Q


class _Counter:
    def __init__(self, H: torch.Tensor) -> None:
        self.H = H
        self.calls = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.H @ v


def _check_basis(basis: KrylovBasis, H: torch.Tensor) -> None:
    k = basis.k
    V = basis.V
    assert V.shape == (k, H.shape[0])
    assert torch.allclose(V @ V.T, torch.eye(k, dtype=F64), atol=1e-12, rtol=0)
    hn = float(torch.linalg.matrix_norm(H, 2))
    assert torch.allclose(basis.T, V @ H @ V.T, atol=1e-12 * hn, rtol=0)
    # T is symmetric tridiagonal
    assert torch.equal(basis.T, basis.T.T)
    assert torch.equal(torch.triu(basis.T, 2), torch.zeros_like(basis.T))


def _true_relres(H, V, T, b, j):
    beta0 = float(torch.linalg.vector_norm(b))
    y = newton_step_in_subspace(T[:j, :j], beta0)
    x = y @ V[:j]
    return float(torch.linalg.vector_norm(H @ x - b)) / beta0


# ----------------------------------------------------------------------------- lanczos


def test_lanczos_spd_orthonormal_projection_and_relres():
    N = 60
    H = _spd(N, 1.0, 50.0, seed=0)
    b = torch.randn(N, generator=torch.Generator().manual_seed(1), dtype=F64)
    op = _Counter(H)
    basis = lanczos(op, b, max_iter=N, rtol=1e-10)
    assert basis.converged and basis.relres < 1e-10
    assert basis.k <= N and basis.n_products == op.calls == basis.k
    assert len(basis.relres_history) == basis.k
    assert basis.beta0 == pytest.approx(float(torch.linalg.vector_norm(b)), rel=1e-14)
    assert torch.allclose(basis.V[0], b / basis.beta0, atol=1e-15)
    _check_basis(basis, H)
    # reported relres equals the true residual of every prefix Galerkin solution
    checked = 0
    for j, rep in enumerate(basis.relres_history, start=1):
        true = _true_relres(H, basis.V, basis.T, b, j)
        if true > 1e-6:
            assert rep == pytest.approx(true, rel=1e-8), j
            checked += 1
    assert checked >= 5
    # final solution solves H x = b
    x = basis.expand(basis.galerkin())
    assert float(torch.linalg.vector_norm(H @ x - b)) / basis.beta0 < 1e-9
    # history decreasing overall (CG residuals need not be monotone, the final one is tiny)
    assert basis.relres_history[0] > 1e-2


def test_lanczos_stops_at_rtol_and_max_iter():
    N = 60
    H = _spd(N, 1.0, 1000.0, seed=2)
    b = torch.randn(N, generator=torch.Generator().manual_seed(3), dtype=F64)
    loose = lanczos(lambda v: H @ v, b, max_iter=50, rtol=1e-2)
    assert loose.converged and loose.relres < 1e-2
    assert all(r >= 1e-2 for r in loose.relres_history[:-1])
    capped = lanczos(lambda v: H @ v, b, max_iter=4, rtol=1e-12)
    assert capped.k == 4 and capped.n_products == 4 and not capped.converged
    assert capped.relres == pytest.approx(_true_relres(H, capped.V, capped.T, b, 4), rel=1e-8)
    # the capped basis is the prefix of a longer one
    assert torch.allclose(capped.T, loose.T[:4, :4], atol=1e-10)


def test_lanczos_rank_deficient_psd():
    N, r = 60, 15
    gen = torch.Generator().manual_seed(4)
    A = torch.randn(N, r, generator=gen, dtype=F64)
    H = A @ A.T
    # b with a null-space component: invariant subspace of dimension r + 1, breakdown there (in
    # floating point β_{r+1} is ~1e-6, not 1e-14, and one more (null-space) vector may be added)
    b = torch.randn(N, generator=gen, dtype=F64)
    basis = lanczos(lambda v: H @ v, b, max_iter=50, rtol=1e-10)
    _check_basis(basis, H)
    assert basis.breakdown and r + 1 <= basis.k <= r + 2 and not basis.converged
    U, _, _ = torch.linalg.svd(A, full_matrices=False)
    b_null = b - U @ (U.T @ b)
    expected = float(torch.linalg.vector_norm(b_null)) / basis.beta0
    assert basis.relres == pytest.approx(expected, rel=1e-8)
    x = basis.expand(basis.galerkin())
    assert basis.relres == pytest.approx(
        float(torch.linalg.vector_norm(H @ x - b)) / basis.beta0, rel=1e-8
    )
    # b in the range: converges within r vectors
    b2 = A @ torch.randn(r, generator=gen, dtype=F64)
    basis2 = lanczos(lambda v: H @ v, b2, max_iter=50, rtol=1e-8)
    _check_basis(basis2, H)
    assert basis2.converged and basis2.k <= r
    x2 = basis2.expand(basis2.galerkin())
    assert float(torch.linalg.vector_norm(H @ x2 - b2)) / basis2.beta0 < 1e-8


def test_lanczos_null_and_zero_rhs():
    N = 10
    basis = lanczos(lambda v: v, torch.zeros(N, dtype=F64), max_iter=5, rtol=1e-6)
    assert basis.k == 0 and basis.V.shape == (0, N) and basis.T.shape == (0, 0)
    assert basis.converged and basis.relres == 0.0 and basis.n_products == 0
    assert torch.equal(basis.expand(torch.zeros(0, dtype=F64)), torch.zeros(N, dtype=F64))
    # H = 0: immediate breakdown, the Galerkin solution is 0, relres 1
    basis = lanczos(lambda v: torch.zeros_like(v), torch.ones(N, dtype=F64), 5, 1e-6)
    assert basis.k == 1 and basis.breakdown and basis.relres == pytest.approx(1.0)
    assert not basis.converged


def test_lanczos_identity_breakdown_after_one():
    b = torch.arange(1.0, 8.0, dtype=F64)
    basis = lanczos(lambda v: 3.0 * v, b, max_iter=7, rtol=1e-30)
    assert basis.k == 1 and basis.breakdown and basis.relres < 1e-15
    x = basis.expand(basis.galerkin())
    assert torch.allclose(x, b / 3.0, atol=1e-14)


# ----------------------------------------------------------------------------- TR subproblem


def _m(T: np.ndarray, g: np.ndarray, z: np.ndarray) -> float:
    return float(g @ z + 0.5 * z @ T @ z)


def _scipy_tr(T: np.ndarray, g: np.ndarray, radius: float, seed: int) -> float:
    """Best model value of SLSQP from several starts (independent reference)."""
    rng = np.random.default_rng(seed)
    k = g.shape[0]
    cons = {
        "type": "ineq",
        "fun": lambda z: radius**2 - z @ z,
        "jac": lambda z: -2.0 * z,
    }
    best = 0.0
    starts = [np.zeros(k)] + [rng.standard_normal(k) * radius / math.sqrt(k) for _ in range(4)]
    for z0 in starts:
        res = minimize(
            lambda z: _m(T, g, z),
            z0,
            jac=lambda z: g + T @ z,
            constraints=[cons],
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 500},
        )
        z = res.x
        nz = np.linalg.norm(z)
        if nz > radius:
            z = z * (radius / nz)
        best = min(best, _m(T, g, z))
    return best


def _tr_cases():
    rng = np.random.default_rng(10)
    cases = []
    for i, k in enumerate(range(2, 13)):
        for kind in ("spd", "psd", "indef", "hard", "hard_interior_psd"):
            d = rng.uniform(0.5, 10.0, k)
            if kind == "psd":
                d[: max(1, k // 3)] = 0.0
            elif kind in ("indef", "hard"):
                d[: max(1, k // 3)] = -rng.uniform(0.5, 5.0, max(1, k // 3))
            elif kind == "hard_interior_psd":
                d[0] = 0.0
            d = np.sort(d)
            for radius in (0.05, 2.0, 1e3):
                cases.append((kind, k, d, radius, 100 * i + len(cases)))
    return cases


@pytest.mark.parametrize("kind", ["spd", "psd", "indef", "hard", "hard_interior_psd"])
def test_tr_subproblem_against_scipy_and_kkt(kind):
    n_checked = 0
    for case_kind, k, d, radius, seed in _tr_cases():
        if case_kind != kind:
            continue
        rng = np.random.default_rng(seed)
        Tt, Q = _sym_with_eigs(torch.tensor(d), seed)
        gt = rng.standard_normal(k) * rng.uniform(0.1, 10.0)
        if kind in ("hard", "hard_interior_psd", "psd"):
            # g ⟂ the lowest eigenspace (for psd: g in the range of T)
            low = d <= d[0] + 1e-12
            gt[low] = 0.0
        if kind == "hard":
            gt *= 1e-2  # small g so that ||z(−d_min)|| < radius for the larger radii
        g = Q @ torch.tensor(gt)
        T = Tt.numpy()
        sol = solve_tr_subproblem(Tt, g, radius)
        z = sol.z.numpy()
        gn = g.numpy()
        scale = max(1.0, abs(_m(T, gn, z)), float(np.linalg.norm(gn)) * radius)
        # feasibility and reported quantities
        assert np.linalg.norm(z) <= radius * (1 + 1e-10)
        assert sol.pred >= 0.0
        assert sol.pred == pytest.approx(-_m(T, gn, z), rel=1e-10, abs=1e-14 * scale)
        # KKT: (T + λI) z = −g, λ ≥ 0, λ(||z|| − r) = 0, T + λI ⪰ 0  (sufficient for global opt)
        lam = sol.lam
        assert lam >= 0.0
        kkt = (T + lam * np.eye(k)) @ z + gn
        assert np.linalg.norm(kkt) <= 1e-9 * (np.linalg.norm(gn) + (abs(lam) + 10.0) * radius)
        assert lam * abs(np.linalg.norm(z) - radius) <= 1e-9 * max(1.0, lam) * radius
        assert np.linalg.eigvalsh(T + lam * np.eye(k))[0] >= -1e-10 * max(1.0, np.abs(d).max())
        if sol.on_boundary:
            assert np.linalg.norm(z) == pytest.approx(radius, rel=1e-10)
        # independent scipy reference: ours is at least as good
        ref = _scipy_tr(T, gn, radius, seed)
        assert _m(T, gn, z) <= ref + 1e-8 * scale
        n_checked += 1
        if kind == "spd" and radius == 1e3:
            # interior: the Newton step, lam = 0
            assert not sol.on_boundary and lam == 0.0
            assert np.allclose(z, np.linalg.solve(T, -gn), rtol=1e-9, atol=1e-12)
        if kind == "hard" and radius == 1e3:
            assert sol.hard_case and sol.on_boundary
            assert lam == pytest.approx(-d[0], rel=1e-12)
        if kind == "hard_interior_psd" and radius == 1e3:
            # PSD singular, g in the range: minimum-norm minimiser, lam = 0
            assert not sol.on_boundary and lam == 0.0
            assert np.allclose(z, -np.linalg.pinv(T, rcond=1e-10) @ gn, rtol=1e-8, atol=1e-10)
    assert n_checked == 33


def test_tr_subproblem_psd_g_not_in_range_goes_to_boundary():
    d = torch.tensor([0.0, 1.0, 4.0], dtype=F64)
    T, Q = _sym_with_eigs(d, seed=5)
    g = Q @ torch.tensor([1e-3, 1.0, 1.0], dtype=F64)
    sol = solve_tr_subproblem(T, g, 1e3)
    assert sol.on_boundary and sol.lam > 0.0
    assert float(torch.linalg.vector_norm(sol.z)) == pytest.approx(1e3, rel=1e-10)
    ref = _scipy_tr(T.numpy(), g.numpy(), 1e3, 0)
    assert -sol.pred <= ref + 1e-8 * 1e3


def test_tr_subproblem_near_hard_case():
    # γ_1 tiny but nonzero: λ just above −d_min
    d = torch.tensor([-2.0, 1.0, 3.0, 5.0], dtype=F64)
    T, Q = _sym_with_eigs(d, seed=6)
    g = Q @ torch.tensor([1e-7, 0.1, 0.2, 0.1], dtype=F64)
    sol = solve_tr_subproblem(T, g, 10.0)
    z = sol.z
    assert sol.on_boundary
    assert float(torch.linalg.vector_norm(z)) == pytest.approx(10.0, rel=1e-10)
    res = (T + sol.lam * torch.eye(4, dtype=F64)) @ z + g
    assert float(torch.linalg.vector_norm(res)) < 1e-9
    assert sol.lam >= 2.0
    ref = _scipy_tr(T.numpy(), g.numpy(), 10.0, 1)
    assert -sol.pred <= ref + 1e-8 * 10.0


def test_tr_subproblem_degenerate_inputs():
    sol = solve_tr_subproblem(torch.zeros(0, 0, dtype=F64), torch.zeros(0, dtype=F64), 1.0)
    assert sol.z.shape == (0,) and sol.pred == 0.0
    # g = 0, T PSD: z = 0
    sol = solve_tr_subproblem(torch.eye(3, dtype=F64), torch.zeros(3, dtype=F64), 1.0)
    assert torch.equal(sol.z, torch.zeros(3, dtype=F64)) and not sol.on_boundary
    # g = 0, T indefinite: hard case, boundary along the negative eigenvector
    T = torch.diag(torch.tensor([-1.0, 2.0], dtype=F64))
    sol = solve_tr_subproblem(T, torch.zeros(2, dtype=F64), 0.5)
    assert sol.on_boundary and sol.lam == pytest.approx(1.0)
    assert abs(float(sol.z[0])) == pytest.approx(0.5) and sol.pred == pytest.approx(0.125)
    # T = 0: steepest descent to the boundary
    g = torch.tensor([3.0, 4.0], dtype=F64)
    sol = solve_tr_subproblem(torch.zeros(2, 2, dtype=F64), g, 2.0)
    assert torch.allclose(sol.z, -g * 2.0 / 5.0, atol=1e-12)
    assert sol.lam == pytest.approx(2.5, rel=1e-12) and sol.pred == pytest.approx(10.0)


def test_tr_step_in_lanczos_basis_pred_matches_full_space():
    N = 40
    H = _spd(N, 0.1, 20.0, seed=7)
    grad = torch.randn(N, generator=torch.Generator().manual_seed(8), dtype=F64)
    basis = lanczos(lambda v: H @ v, -grad, max_iter=10, rtol=1e-12)
    z_newton = newton_step_in_subspace(basis.T, basis.beta0)
    radius = 0.5 * float(torch.linalg.vector_norm(z_newton))
    sol = tr_step_in_subspace(basis.T, basis.beta0, radius)
    s = basis.expand(sol.z)
    assert sol.on_boundary
    assert float(torch.linalg.vector_norm(s)) == pytest.approx(radius, rel=1e-10)
    pred_full = -float(grad @ s + 0.5 * s @ (H @ s))
    assert sol.pred == pytest.approx(pred_full, rel=1e-10)
    # large radius: the Galerkin step itself
    big = tr_step_in_subspace(basis.T, basis.beta0, 1e6)
    assert not big.on_boundary and torch.allclose(big.z, z_newton, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- Steihaug


def _cauchy_pred(H: torch.Tensor, g: torch.Tensor, radius: float) -> float:
    gn = float(torch.linalg.vector_norm(g))
    curv = float(g @ H @ g)
    tau = 1.0 if curv <= 0 else min(gn**3 / (radius * curv), 1.0)
    s = -tau * radius / gn * g
    return -float(g @ s + 0.5 * s @ H @ s)


def test_steihaug_newton_step_for_large_radius():
    N = 30
    H = _spd(N, 1.0, 10.0, seed=11)
    g = torch.randn(N, generator=torch.Generator().manual_seed(12), dtype=F64)
    op = _Counter(H)
    res = steihaug_cg(op, g, radius=1e6, max_iter=200, rtol=1e-12)
    s_exact = torch.linalg.solve(H, -g)
    assert not res.on_boundary and res.relres <= 1e-12
    assert res.n_products == op.calls == res.iterations <= N
    assert torch.allclose(res.s, s_exact, rtol=1e-9, atol=1e-11)
    assert res.relres == pytest.approx(
        float(torch.linalg.vector_norm(H @ res.s + g)) / float(torch.linalg.vector_norm(g)),
        rel=1e-6,
    )


@pytest.mark.parametrize("seed", range(6))
def test_steihaug_boundary_pred_and_decrease(seed):
    N = 30
    gen = torch.Generator().manual_seed(100 + seed)
    indefinite = seed % 2 == 1
    d = torch.linspace(0.5, 20.0, N, dtype=F64)
    if indefinite:
        d[:5] = -torch.linspace(0.1, 3.0, 5, dtype=F64)
    H, _ = _sym_with_eigs(d, seed=200 + seed)
    g = torch.randn(N, generator=gen, dtype=F64)
    for radius in (0.01, 0.3, 3.0):
        res = steihaug_cg(lambda v, H=H: H @ v, g, radius=radius, max_iter=100, rtol=1e-10)
        s = res.s
        pred_dense = -float(g @ s + 0.5 * s @ H @ s)
        assert res.pred == pytest.approx(pred_dense, rel=1e-10, abs=1e-13)
        assert float(torch.linalg.vector_norm(s)) <= radius * (1 + 1e-12)
        if res.on_boundary:
            assert float(torch.linalg.vector_norm(s)) == pytest.approx(radius, rel=1e-12)
        exact = solve_tr_subproblem(H, g, radius)
        assert res.pred <= exact.pred * (1 + 1e-10)
        assert res.pred >= _cauchy_pred(H, g, radius) * (1 - 1e-12)
        if not indefinite:
            assert res.pred >= 0.5 * exact.pred  # Yuan: ≥ half the optimal reduction (H ≻ 0)
        if radius == 0.01:
            assert res.on_boundary
        if indefinite and radius == 3.0:
            assert res.on_boundary


def test_steihaug_negative_curvature_first_step():
    H = -torch.eye(4, dtype=F64)
    g = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=F64)
    res = steihaug_cg(lambda v: H @ v, g, radius=2.0, max_iter=10, rtol=1e-8)
    assert res.negative_curvature and res.on_boundary and res.n_products == 1
    assert torch.allclose(res.s, torch.tensor([-2.0, 0.0, 0.0, 0.0], dtype=F64))
    assert res.pred == pytest.approx(2.0 + 2.0)
    zero = steihaug_cg(lambda v: H @ v, torch.zeros(4, dtype=F64), 1.0, 10, 1e-8)
    assert zero.n_products == 0 and torch.equal(zero.s, torch.zeros(4, dtype=F64))


# ----------------------------------------------------------------------------- float32


def test_float32_smoke():
    N = 20
    H64 = _spd(N, 1.0, 5.0, seed=13)
    H = H64.float()
    g = torch.randn(N, generator=torch.Generator().manual_seed(14), dtype=torch.float32)
    basis = lanczos(lambda v: H @ v, -g, max_iter=N, rtol=1e-4)
    assert basis.V.dtype == torch.float32 and basis.T.dtype == F64 and basis.converged
    assert torch.allclose(basis.V @ basis.V.T, torch.eye(basis.k), atol=1e-5)
    sol = tr_step_in_subspace(basis.T, basis.beta0, radius=0.1)
    s = basis.expand(sol.z)
    assert s.dtype == torch.float32
    assert float(torch.linalg.vector_norm(s)) == pytest.approx(0.1, rel=1e-5)
    x = basis.expand(newton_step_in_subspace(basis.T, basis.beta0))
    assert torch.allclose(x, torch.linalg.solve(H64, -g.double()).float(), atol=1e-3)
    res = steihaug_cg(lambda v: H @ v, g, radius=100.0, max_iter=50, rtol=1e-5)
    assert res.s.dtype == torch.float32 and res.relres < 1e-4
    assert res.pred == pytest.approx(-float(g @ res.s + 0.5 * res.s @ H @ res.s), rel=1e-4)


def test_tr_subproblem_at_an_underflowing_radius():
    """The Lanczos T, g and Δ ≈ 1e-156 of a trust region that had kept shrinking after
    convergence (the peer benchmark's wine problem, seed 2): ‖w‖³ underflows to 0 in the
    secular equation's Newton update, which raised a ZeroDivisionError; it bisects instead."""
    from pathlib import Path

    case = torch.load(Path(__file__).parent / "data" / "tr_subproblem_underflow.pt")
    sol = solve_tr_subproblem(case["T"], case["g"], case["radius"])
    assert bool(torch.isfinite(sol.z).all()) and sol.on_boundary
    assert float(torch.linalg.vector_norm(sol.z)) == pytest.approx(case["radius"], rel=1e-10)
