"""Derivatives of the least-squares reduced objective (float64, tiny model, docs/method.md §7)."""

import pytest
import torch
from stacked_residual import StackedResidual
from torch.func import jacrev

from gnvpro import ReducedObjective, make_loss, split_model
from gnvpro.checks import adjoint_test, taylor_test
from gnvpro_experiments.models import paper_network, time_smoothness

ALPHA_W, ALPHA_T = 1e-3, 1e-4


def _objective(model, x, y, **kw):
    split = split_model(model, probe=x)
    return ReducedObjective(split, make_loss("least_squares"), x, y, ALPHA_W, ALPHA_T, **kw)


def _theta(obj):
    return obj.features.layout.flatten(obj.split.feature_params(), torch.float64).detach()


def _closed_form_phi(obj, theta):
    """Φ_red by autograd-friendly closed form: W* = CᵀẐ(ẐᵀẐ + nα_W I)⁻¹."""
    Zh = obj.augment(obj.split.features(obj.features.params(theta), obj.features.x))
    n, p = Zh.shape
    W = torch.linalg.solve(Zh.T @ Zh + n * ALPHA_W * torch.eye(p, dtype=Zh.dtype), Zh.T @ obj.C).T
    r = torch.cat([((Zh @ W.T - obj.C) / n**0.5).reshape(-1), ALPHA_T**0.5 * obj.reg.apply_B(theta),
                   ALPHA_W**0.5 * W.reshape(-1)])
    return r


@pytest.mark.parametrize("jvp_mode", ["double-backward", "jvp", "linearize"])
def test_taylor_reduced_objective(tiny_regression, jvp_mode):
    obj = _objective(*tiny_regression, jvp_mode=jvp_mode)
    th = _theta(obj)
    pt = obj.evaluate(th)
    g = obj.gradient(pt)
    v = torch.randn(th.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = taylor_test(lambda t: torch.tensor(obj.evaluate(t).value), th, v, g @ v, h0=0.5)
    assert res.best_order() > 1.9
    assert res.e0[-1] / res.e0[-2] > 0.45  # E0 is only first order: the test can tell


def test_taylor_stacked_residual(tiny_regression):
    obj = _objective(*tiny_regression)
    th = _theta(obj)
    pt = obj.evaluate(th)
    r = StackedResidual(obj, pt)
    v = torch.randn(th.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    res = taylor_test(lambda t: StackedResidual(obj, obj.evaluate(t)).value(), th, v, r.forward(v))
    assert res.best_order() > 1.9
    value = torch.tensor(pt.value, dtype=torch.float64)
    assert torch.allclose(0.5 * r.value().square().sum(), value, rtol=1e-12)


def test_adjoints(tiny_regression):
    obj = _objective(*tiny_regression)
    th = _theta(obj)
    pt = obj.evaluate(th)
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(th.shape, generator=gen, dtype=torch.float64)
    # J_Z
    jz = obj.features.jvp_fn(th)
    _, jzt = obj.features.with_vjp(th)
    u = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    assert adjoint_test(jz, jzt, v, u) < 1e-12
    # J_S and J_W
    jac = obj.jacobian(pt)
    X = torch.randn(20, 2, generator=gen, dtype=torch.float64)
    R = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    assert adjoint_test(lambda w: jac.forward(w)[0], lambda x_: jac.adjoint(x_), v, X) < 1e-12
    assert adjoint_test(
        lambda w: jac.forward(w)[1], lambda r_: jac.adjoint(torch.zeros_like(X), r_), v, R
    ) < 1e-12
    # stacked residual J_r
    r = StackedResidual(obj, pt)
    ur = torch.randn(r.value().shape, generator=gen, dtype=torch.float64)
    assert adjoint_test(r.forward, r.adjoint, v, ur) < 1e-12


def test_envelope_gradient_equals_autograd_through_closed_form(tiny_regression):
    obj = _objective(*tiny_regression)
    th = _theta(obj)
    g_auto = jacrev(lambda t: 0.5 * _closed_form_phi(obj, t).square().sum())(th)
    g = obj.gradient(obj.evaluate(th))
    assert torch.allclose(g, g_auto, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("jvp_mode", ["double-backward", "jvp", "linearize"])
def test_gauss_newton_equals_dense_jtj(tiny_regression, jvp_mode):
    obj = _objective(*tiny_regression, jvp_mode=jvp_mode)
    th = _theta(obj)
    J = jacrev(lambda t: _closed_form_phi(obj, t))(th)  # (len r, len θ), full Golub-Pereyra
    H_dense = J.T @ J
    H = obj.gn_operator(obj.evaluate(th))
    H_op = torch.stack([H(e) for e in torch.eye(th.numel(), dtype=torch.float64)], 1)
    assert torch.allclose(H_op, H_dense, rtol=1e-9, atol=1e-12)
    assert torch.allclose(H_op, H_op.T, atol=1e-12)
    assert torch.linalg.eigvalsh(H_op).min() > -1e-10


def test_kaufman_drops_dW(tiny_regression):
    obj = _objective(*tiny_regression, jacobian="kaufman")
    full = _objective(*tiny_regression)
    th = _theta(obj)
    v = torch.randn(th.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    pk, pf = obj.evaluate(th), full.evaluate(th)
    dSk, dWk = obj.jacobian(pk).forward(v)
    dSf, dWf = full.jacobian(pf).forward(v)
    assert dWk.abs().max() == 0 and dWf.abs().max() > 0
    dZh = obj.augment(obj.features.jvp_fn(th)(v))
    dZh[:, -1] = 0
    assert torch.allclose(dSk, dZh @ pk.W.T, atol=1e-14)
    assert not torch.allclose(dSk, dSf, atol=1e-8)


def test_time_smoothness_regulariser_derivatives():
    g = torch.Generator().manual_seed(5)
    model = paper_network(3, 2, width=4, n_nodes=3, n_steps=2, generator=g)
    with torch.no_grad():  # distinct weights at the nodes so that Bθ ≠ 0
        noise = torch.randn(model[0].theta.shape, generator=g, dtype=torch.float64)
        model[0].theta.add_(0.1 * noise)
    x = torch.randn(16, 3, generator=g, dtype=torch.float64)
    y = torch.randn(16, 2, generator=g, dtype=torch.float64)
    split = split_model(model)
    B = time_smoothness(model)
    obj = ReducedObjective(split, make_loss("least_squares"), x, y, ALPHA_W, 1e-1, B=B)
    th = _theta(obj)
    pt = obj.evaluate(th)
    assert float(obj.reg.value(th)) > 0
    v = torch.randn(th.shape, generator=g, dtype=torch.float64)
    res = taylor_test(lambda t: torch.tensor(obj.evaluate(t).value), th, v, obj.gradient(pt) @ v)
    assert res.best_order() > 1.9
    r = StackedResidual(obj, pt)
    u = torch.randn(r.value().shape, generator=g, dtype=torch.float64)
    assert adjoint_test(r.forward, r.adjoint, v, u) < 1e-12
    Hv = obj.gn_operator(pt)(v)
    assert torch.allclose(Hv, r.adjoint(r.forward(v)), rtol=1e-10, atol=1e-13)


def test_affine_head_shared_by_reduced_and_joint_objectives(tiny_regression):
    from gnvpro.affine import AffineHead
    from gnvpro.joint import JointProblem

    obj = _objective(*tiny_regression)
    joint = JointProblem(obj.split, obj.loss, *tiny_regression[1:], ALPHA_W, ALPHA_T)
    head = obj.head
    assert (head.m, head.c, head.p, head.bias) == (4, 2, 5, True)
    assert joint.w_shape == head.w_shape == (2, 5) and joint.m == 4
    Z = torch.randn(3, 4, dtype=torch.float32)
    Zh = obj.augment(Z)
    assert Zh.dtype == torch.float64 and torch.equal(Zh[:, :4], Z.double())
    assert torch.equal(Zh[:, 4], torch.ones(3, dtype=torch.float64))
    assert torch.equal(head.pad(Z), torch.cat([Z, torch.zeros(3, 1)], 1))
    no_bias = AffineHead(4, 2, bias=False)
    assert no_bias.w_shape == (2, 4)
    assert torch.equal(no_bias.augment(Z), Z.double()) and no_bias.pad(Z) is Z
