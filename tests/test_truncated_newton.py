"""Truncated Gauss-Newton (PreconditionedCG + StrongWolfe): CG, the L-BFGS preconditioner, the
line search, descent and work accounting (float64, tiny models)."""

import math
from dataclasses import fields, replace

import pytest
import torch

from gnvpro import (
    GNvpro,
    GNvproConfig,
    LanczosSubspace,
    PreconditionedCG,
    ReducedObjective,
    StrongWolfe,
    TrustRegion,
    make_loss,
    split_model,
)
from gnvpro.checks import taylor_test
from gnvpro.linalg.cg import pcg
from gnvpro.linalg.lbfgs import curvature_pair, newest, two_loop
from gnvpro.solver import (
    SolverConfig,
    initial_state,
    outer_step,
)


def _spd(n, seed, cond=1e3):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return Q @ torch.diag(torch.logspace(0, math.log10(cond), n, dtype=torch.float64)) @ Q.T


def test_pcg_solves_spd_system_and_uses_the_preconditioner():
    A = _spd(12, 0)
    b = torch.randn(12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = pcg(lambda v: A @ v, b, 1e-10 * float(b.norm()), 50)
    assert torch.allclose(A @ res.x, b, atol=1e-8) and res.iterations <= 24
    exact = torch.linalg.inv(A)
    pre = pcg(lambda v: A @ v, b, 1e-10 * float(b.norm()), 50, precond=lambda r: exact @ r)
    assert pre.iterations == 1 and torch.allclose(pre.x, exact @ b, atol=1e-10)


def test_pcg_negative_curvature_falls_back_to_the_preconditioned_rhs():
    A = -torch.eye(4, dtype=torch.float64)
    b = torch.ones(4, dtype=torch.float64)
    res = pcg(lambda v: A @ v, b, 1e-12, 10, precond=lambda r: 2 * r)
    assert res.negative_curvature and torch.equal(res.x, 2 * b)


def test_lbfgs_preconditioner_secant_and_positive_definite():
    g = torch.Generator().manual_seed(2)
    A = _spd(6, 3, cond=50.0)
    pairs = ()
    for _ in range(4):
        s = torch.randn(6, generator=g, dtype=torch.float64)
        pairs = newest(pairs, curvature_pair(s, A @ s), memory=3)
    assert len(pairs) == 3
    s, y, _ = pairs[-1]
    assert torch.allclose(two_loop(y, pairs), s, rtol=1e-10)  # H y = s for the newest pair
    Hm = torch.stack([two_loop(e, pairs) for e in torch.eye(6, dtype=torch.float64)], 1)
    assert torch.linalg.eigvalsh(0.5 * (Hm + Hm.T)).min() > 0
    assert curvature_pair(s, -s) is None  # sᵀy < 0 is refused


def _objective(model, x, y):
    split = split_model(model, probe=x)
    return ReducedObjective(split, make_loss("least_squares"), x, y, 1e-6, 1e-6)


def test_tn_step_is_a_descent_step_with_exact_work_units(tiny_regression):
    obj = _objective(*tiny_regression)
    th = obj.features.layout.flatten(obj.split.feature_params(), torch.float64).detach()
    cfg = SolverConfig(descent=PreconditionedCG(max_products=5, rtol=1e-3), search=StrongWolfe())
    state = initial_state(obj, th)
    for _ in range(6):
        before = state
        state, info = outer_step(obj, state, cfg)
        assert info.accepted and state.pt.value < before.pt.value
        products = 2 * info.krylov_iters  # each value 1 WU, each gradient (≥ 1) 1 WU
        low = before.work + products + info.line_search_evals + 1
        assert low <= state.work <= before.work + products + 2 * info.line_search_evals
        step = state.pt.theta - before.pt.theta
        assert float(before.g @ step) < 0  # a descent direction
    assert len(state.pairs) >= 1  # the preconditioner learnt from the accepted steps


def test_tn_line_search_slope_is_the_directional_derivative(tiny_regression):
    """φ(α) = Φ_red(θ + α d) with φ'(0) = gᵀd: Taylor order 2 along the CG direction."""
    obj = _objective(*tiny_regression)
    th = obj.features.layout.flatten(obj.split.feature_params(), torch.float64).detach()
    state = initial_state(obj, th)
    d = pcg(obj.gn_operator(state.pt), -state.g, 1e-3 * state.grad_norm, 5).x
    res = taylor_test(lambda a: torch.tensor(obj.evaluate(th + a * d).value),
                      torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64),
                      state.g @ d, h0=0.5)
    assert res.best_order() > 1.9


def test_tn_through_the_optimiser_trains_and_records(tiny_regression):
    model, x, y = tiny_regression
    opt = GNvpro(model, alpha_w=1e-6, alpha_theta=1e-6,
                 config=GNvproConfig(descent=PreconditionedCG(max_products=10)))
    hist = opt.run(x, y, max_iter=20)
    losses = [r.loss for r in hist.records]
    assert losses[-1] < 0.2 * losses[0]
    assert all(b <= a for a, b in zip(losses, losses[1:], strict=False))
    assert all(r.line_search_evals >= 1 and r.step_length > 0 for r in hist.records)
    with torch.no_grad():
        S = model(x)
    assert abs(float(0.5 / len(x) * (S - y).square().sum()) - hist.final.data_loss) < 1e-10


@pytest.mark.parametrize("extrapolate", [False, True])
def test_trust_region_extrapolation_ablation(tiny_regression, extrapolate):
    model, x, y = tiny_regression
    opt = GNvpro(model, alpha_w=1e-6, alpha_theta=1e-6,
                 config=GNvproConfig(descent=LanczosSubspace(max_products=5),
                                     search=TrustRegion(extrapolate=extrapolate)))
    hist = opt.run(x, y, max_iter=10)
    losses = [r.loss for r in hist.records]
    assert losses[-1] < 0.5 * losses[0]
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:], strict=False))


def test_method_configs_are_solver_configs():
    cfg = GNvproConfig(descent=PreconditionedCG(memory=3))
    assert isinstance(cfg, SolverConfig)  # the solver reads GNvpro's config itself
    assert {f.name for f in fields(SolverConfig)} <= {f.name for f in fields(GNvproConfig)}
    assert (cfg.descent.memory, cfg.search) == (3, StrongWolfe())
    assert replace(cfg, descent=replace(cfg.descent, memory=4)).descent.memory == 4
