"""Inexact inner solves (InnerOptions.forcing κ, GNvproConfig.inner_forcing): W̃ with
‖∇_W Φ(θ, W̃)‖ ≤ τ = κ·min(‖g‖, α_W‖W0‖) instead of W*(θ) (W0 the warm start).

Float64, the tiny cross-entropy model of test_classification (3 classes). Φ is strongly convex in
W (μ ≥ α_W), so ‖W̃ − W*‖ ≤ τ/μ, the value error is at most τ²/(2μ) and the reduced gradient
computed at W̃ is off by at most (‖∂²_θW Φ‖/μ)·τ: checked here as an error linear in τ, a
relative gradient error ≤ 10 κ under the rule, a Taylor remainder of Φ̂(θ) = Φ(θ, W̃(θ)) within
the exact one plus that first-order error, and a Taylor test that a too-loose τ fails. Then the
solver: the same minimum with fewer Newton iterations, and a state dict that resumes bit for
bit."""

from __future__ import annotations

import copy

import pytest
import torch
from test_classification import _direction, _labels, _objective

from gnvpro import GNvpro, GNvproConfig
from gnvpro.checks import taylor_test
from gnvpro.varpro import InnerOptions
from gnvpro_experiments.models import mlp

DT = torch.float64
LOSS, C, ALPHA_W = "cross_entropy", 3, 1e-2


def _forced(kappa: float):
    return _objective(LOSS, C, ALPHA_W, inner=InnerOptions(rtol=1e-13, atol=1e-13,
                                                           forcing=kappa))


def test_the_inner_solve_stops_at_the_forced_tolerance_and_the_gradient_error_is_linear():
    exact, th = _objective(LOSS, C, ALPHA_W)
    g = exact.gradient(exact.evaluate(th))
    obj, _ = _forced(1.0)  # τ = outer_grad_norm itself
    errors = []
    for tau in (1e-3, 1e-5):
        pt = obj.evaluate(th, outer_grad_norm=tau)  # from W = 0: stops once ‖∇_W Φ‖ ≤ τ
        assert pt.inner.converged and 1e-13 < pt.inner.grad_norm <= tau  # stopped early
        assert 0 <= pt.value - exact.evaluate(th).value <= pt.inner.grad_norm ** 2 / ALPHA_W
        errors.append(float((obj.gradient(pt) - g).norm()) / pt.inner.grad_norm)
    # ‖ĝ − g‖ / ‖∇_W Φ(W̃)‖ ≤ ‖∂²_θW Φ‖/μ, one constant at both τ (measured 3.87 and 3.93)
    assert max(errors) < 10.0 and max(errors) / min(errors) < 2.0, errors
    assert obj.evaluate(th).inner.grad_norm <= 1e-13  # no outer gradient norm: exact


def test_with_a_small_alpha_w_the_tolerance_keeps_w_relatively_accurate():
    """τ = κ·min(‖g‖, α_W‖W0‖) from a warm start W0: with μ ≥ α_W, ‖W̃ − W*‖ ≤ κ‖W0‖ however
    small α_W is (κ‖g‖/α_W alone would allow any error there)."""
    alpha, kappa = 1e-6, 0.1
    exact, th = _objective(LOSS, C, alpha)
    p0 = exact.evaluate(th)
    th1 = th + 1e-2 * _direction(th, 1)
    w_star = exact.evaluate(th1, prev=p0).W
    obj, _ = _objective(LOSS, C, alpha, inner=InnerOptions(rtol=1e-13, atol=1e-13,
                                                            forcing=kappa))
    pt = obj.evaluate(th1, prev=p0, outer_grad_norm=1e3)  # a large ‖g‖: α_W‖W0‖ decides
    w0 = float(p0.W.norm())
    assert pt.inner.converged and pt.inner.grad_norm <= kappa * alpha * w0
    assert float((pt.W - w_star).norm()) <= kappa * w0


@pytest.mark.parametrize("kappa", [1e-3, 1e-2])
def test_the_rule_bounds_the_relative_gradient_error_and_the_taylor_remainder(kappa):
    """Φ̂ and ĝ from solves to τ = κ‖g(θ)‖ (what the searches pass): ‖ĝ − g‖ ≤ 10 κ ‖g‖, and
    the Taylor remainder of Φ̂ along v exceeds the exact one (order 2) by at most the
    first-order term of that error, 10 κ ‖g‖ h, and the two value errors, τ²/α_W."""
    exact, th = _objective(LOSS, C, ALPHA_W)
    g = exact.gradient(exact.evaluate(th))
    gn = float(g.norm())
    obj, _ = _forced(kappa)
    g_hat = obj.gradient(obj.evaluate(th, outer_grad_norm=gn))
    assert float((g_hat - g).norm()) <= 10 * kappa * gn
    v = _direction(th, 1)
    ref = taylor_test(lambda t: torch.tensor(exact.evaluate(t, with_vjp=False).value, dtype=DT),
                      th, v, g @ v, h0=0.5, n=10)
    assert ref.best_order() > 1.8, ref.orders
    res = taylor_test(lambda t: torch.tensor(obj.evaluate(t, outer_grad_norm=gn).value,
                                             dtype=DT), th, v, g_hat @ v, h0=0.5, n=10)
    tau = kappa * gn
    for h, e_hat, e in zip(res.steps, res.e1, ref.e1, strict=True):
        assert e_hat <= e + 10 * kappa * gn * h + tau**2 / ALPHA_W, (h, e_hat, e)


def test_taylor_tells_a_too_loose_inner_tolerance():
    """τ of the order of ‖g‖ itself: the gradient at W̃ is wrong to first order."""
    obj, th = _forced(1.0)
    gn = float(obj.gradient(obj.evaluate(th)).norm())
    g_hat = obj.gradient(obj.evaluate(th, outer_grad_norm=gn))
    v = _direction(th, 1)
    exact, _ = _objective(LOSS, C, ALPHA_W)

    def phi(t):
        return torch.tensor(exact.evaluate(t, with_vjp=False).value, dtype=DT)

    res = taylor_test(phi, th, v, g_hat @ v, h0=0.5, n=10)
    assert res.orders[-1] < 1.5, res.orders


def _problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(120, 4, generator=gen, dtype=DT)
    y = _labels(x, 4, gen)
    return mlp(4, [8, 8], 4, activation="tanh", dtype=DT, generator=gen), x, y


def test_gnvpro_with_forcing_reaches_the_exact_minimum_with_fewer_newton_iterations():
    model, x, y = _problem()
    runs = {}
    for kappa in (0.0, 1e-3):
        opt = GNvpro(copy.deepcopy(model), "cross_entropy", alpha_w=3e-2, alpha_theta=3e-2,
                     config=GNvproConfig(inner_forcing=kappa, inner_rtol=1e-12,
                                         inner_atol=1e-12))
        hist = opt.run(x, y, max_iter=150)
        runs[kappa] = (hist.final.loss, hist.final.grad_norm,
                       sum(r.inner_iterations for r in hist.records))
    (f0, g0, n0), (f1, g1, n1) = runs[0.0], runs[1e-3]
    assert g0 < 1e-5 and g1 < 1e-5, (g0, g1)
    assert f1 == pytest.approx(f0, rel=1e-9)  # measured: 6e-12 apart
    assert n1 < 0.8 * n0, (n0, n1)  # measured: 178 against 297 Newton iterations


def test_a_forced_run_resumes_from_its_state_dict_bit_for_bit():
    model, x, y = _problem(1)
    cfg = GNvproConfig(inner_forcing=1e-2)
    a = GNvpro(copy.deepcopy(model), "cross_entropy", alpha_w=1e-3, alpha_theta=1e-3, config=cfg)
    a.run(x, y, max_iter=4)
    b_model = copy.deepcopy(a.model)
    sd = a.state_dict()
    b = GNvpro(b_model, "cross_entropy", alpha_w=1e-3, alpha_theta=1e-3, config=cfg)
    b.load_state_dict(sd)
    for _ in range(3):
        ra, rb = a.step(x, y), b.step(x, y)
        assert (ra.loss, ra.grad_norm, ra.work_units) == (rb.loss, rb.grad_norm, rb.work_units)


@pytest.mark.parametrize("shift", [0.05, 0.2])
def test_the_tolerance_holds_on_separable_classes_from_a_warm_start(shift):
    """Linearly separable features, α_W = 1e-8 (W* large, Newton slow), warm-started from W*
    of slightly different features: the rule still leaves ‖W̃ − W*‖ ≤ κ‖W0‖ (μ ≥ α_W). A rule
    that stopped on Newton's steps instead (a first step ‖ΔW‖ ≤ √κ‖W‖, later ones by their
    contraction; docs/results.md, tried and not kept) failed this test at shift 0.2."""
    alpha, kappa = 1e-8, 1e-2
    exact, _ = _objective(LOSS, C, alpha)
    obj, _ = _objective(LOSS, C, alpha, inner=InnerOptions(rtol=1e-13, atol=1e-13,
                                                            forcing=kappa))
    g = torch.Generator().manual_seed(3)
    n = exact.C.shape[0]
    Zh = torch.cat([3.0 * exact.C + 0.1 * torch.randn(n, C, generator=g, dtype=DT),
                    torch.randn(n, 1, generator=g, dtype=DT), torch.ones(n, 1, dtype=DT)], 1)
    W0 = exact.solve_inner(Zh).W
    Zh2 = Zh + torch.cat([shift * torch.randn(n, 4, generator=g, dtype=DT),
                          torch.zeros(n, 1, dtype=DT)], 1)
    w_star = exact.solve_inner(Zh2, W0).W
    w = obj.solve_inner(Zh2, W0, outer_grad_norm=1e3)
    assert w.converged and float((W0 - w_star).norm()) > kappa * float(W0.norm())
    assert float((w.W - w_star).norm()) <= kappa * float(W0.norm())
