"""The Gauss-Newton product's fast paths: double-backward J_Z v on a recorded graph, and the
least-squares product without n×c temporaries (float64, dense torch.func references)."""

import pytest
import torch
from torch.func import jacrev, jvp

from gnvpro import ReducedObjective, make_loss, split_model
from gnvpro.autodiff import FeatureMap, resolve_jvp_mode
from gnvpro.checks import adjoint_test, taylor_test
from gnvpro_experiments.models import mlp, paper_cnn, paper_network


@pytest.fixture
def narrow():
    """Features narrower than the outputs (p = 5 ≤ 2c = 12): the least-squares Gram path."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(30, 3, generator=g, dtype=torch.float64)
    y = torch.randn(30, 6, generator=g, dtype=torch.float64)
    return mlp(3, [5, 4], 6, activation="tanh", dtype=torch.float64, generator=g), x, y


def _theta(obj):
    return obj.features.layout.flatten(obj.split.feature_params(), torch.float64).detach()


def _vec(n, seed):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("net", ["mlp", "resnet"])
def test_double_backward_jvp_matches_forward_mode(net):
    g = torch.Generator().manual_seed(0)
    model = (mlp(3, [6, 5], 2, dtype=torch.float64, generator=g) if net == "mlp"
             else paper_network(3, 2, width=4, n_nodes=3, n_steps=2, generator=g))
    x = torch.randn(17, 3, generator=g, dtype=torch.float64)
    split = split_model(model, probe=x)
    fm = FeatureMap(split, x, "double-backward")
    th = fm.layout.flatten(split.feature_params(), torch.float64).detach()
    lin = fm.linearise(th)
    v = _vec(th.numel(), 1)
    _, ref = jvp(lambda t: fm._f(fm.params(t)), (th,), (v,))
    assert torch.allclose(lin.jvp(v), ref, rtol=1e-12, atol=1e-14)
    assert torch.allclose(lin.jvp(2 * v), 2 * ref, rtol=1e-12, atol=1e-14)  # graph reused
    res = taylor_test(lambda t: fm(t), th, v, lin.jvp(v), h0=0.5)
    assert res.best_order() > 1.9
    E = torch.randn(lin.z.shape, generator=g, dtype=torch.float64)
    assert adjoint_test(lin.jvp, lin, v, E) < 1e-12


def _assert_product_is_the_composition(J):
    """H_GN v = J_Sᵀ H_S[J_S v] + α_W J_Wᵀ J_W v + α_θ BᵀB v by the forward and adjoint
    products (α_W J_Wᵀ J_W only with gn_alpha_w and the full Jacobian), for three v."""
    obj = J.obj
    for seed in range(3):
        v = _vec(J.pt.theta.numel(), seed)
        dS, dW = J.forward(v)
        R = obj.alpha_w * dW if (obj.gn_alpha_w and not obj.kaufman) else None
        composed = J.adjoint(J.loss_hessian(dS), R) + obj.reg.gauss_newton(v)
        assert torch.allclose(J.gauss_newton(v), composed, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("jacobian", ["full", "kaufman"])
@pytest.mark.parametrize("gn_alpha_w", [True, False])
def test_least_squares_gram_path_equals_general_product(narrow, jacobian, gn_alpha_w):
    model, x, y = narrow
    obj = ReducedObjective(split_model(model, probe=x), make_loss("least_squares"), x, y, 1e-3,
                           1e-4, jacobian=jacobian, gn_alpha_w=gn_alpha_w)
    J = obj.jacobian(obj.evaluate(_theta(obj)))
    assert J.pt.Zh.shape[1] <= 2 * J.pt.W.shape[0]  # the Gram path is the one taken
    _assert_product_is_the_composition(J)


@pytest.mark.parametrize("loss", ["cross_entropy", "logistic", "least_squares"])
@pytest.mark.parametrize(("chunks", "memory"), [(1, "keep"), (3, "keep"), (3, "recompute")])
@pytest.mark.parametrize("jacobian", ["full", "kaufman"])
@pytest.mark.parametrize("gn_alpha_w", [True, False])
def test_general_product_equals_forward_then_adjoint(loss, chunks, memory, jacobian, gn_alpha_w):
    """H_GN v with Y = −M (gnvpro.jacobian) = J_Sᵀ H_S[J_S v] + α_W J_Wᵀ J_W v + α_θ v, the
    composition of the forward and adjoint products, for every loss and chunking."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(31, 3, generator=g, dtype=torch.float64)
    c = {"cross_entropy": 4, "logistic": 1, "least_squares": 2}[loss]
    y = (torch.randint(0, max(c, 2), (31,), generator=g) if loss != "least_squares"
         else torch.randn(31, c, generator=g, dtype=torch.float64))
    model = mlp(3, [6, 5], c, activation="tanh", dtype=torch.float64, generator=g)
    obj = ReducedObjective(split_model(model, probe=x), make_loss(loss), x, y, 1e-2, 1e-4,
                           jacobian=jacobian, gn_alpha_w=gn_alpha_w, chunks=chunks,
                           memory=memory)
    J = obj.jacobian(obj.evaluate(_theta(obj)))
    assert loss != "least_squares" or J.pt.Zh.shape[1] > 2 * J.pt.W.shape[0]  # not the Gram path
    _assert_product_is_the_composition(J)


@pytest.mark.parametrize("jvp_mode", ["double-backward", "jvp", "linearize"])
def test_gram_path_equals_dense_jtj(narrow, jvp_mode):
    """H_GN = J_rᵀ J_r of the stacked residual, J_r by jacrev of a closed-form W*(θ)."""
    model, x, y = narrow
    aw, at = 1e-3, 1e-4
    obj = ReducedObjective(split_model(model, probe=x), make_loss("least_squares"), x, y, aw, at,
                           jvp_mode=jvp_mode)
    th = _theta(obj)

    def residual(t):
        Zh = obj.augment(obj.split.features(obj.features.params(t), x))
        n, p = Zh.shape
        W = torch.linalg.solve(Zh.T @ Zh + n * aw * torch.eye(p, dtype=Zh.dtype), Zh.T @ obj.C).T
        return torch.cat([((Zh @ W.T - obj.C) / n**0.5).reshape(-1), at**0.5 * t,
                          aw**0.5 * W.reshape(-1)])

    Jr = jacrev(residual)(th)
    H = obj.gn_operator(obj.evaluate(th))
    H_op = torch.stack([H(e) for e in torch.eye(th.numel(), dtype=torch.float64)], 1)
    assert torch.allclose(H_op, Jr.T @ Jr, rtol=1e-9, atol=1e-12)


def test_auto_mode_rule():
    g = torch.Generator().manual_seed(0)
    assert resolve_jvp_mode("auto", mlp(3, [4], 2, generator=g)) == "double-backward"
    assert resolve_jvp_mode("auto", paper_cnn(1, 3, generator=g)) == "linearize"
    assert resolve_jvp_mode("jvp", paper_cnn(1, 3, generator=g)) == "jvp"
    with pytest.raises(ValueError, match="jvp_mode"):
        resolve_jvp_mode("forward", mlp(3, [4], 2, generator=g))


class _NoScalarHessian(type(make_loss("least_squares"))):
    """Least squares through the general (n×c) product path."""

    def scalar_hessian(self):
        return None


@pytest.mark.parametrize("coupled", [True, False])
def test_joint_gn_gram_path_equals_general_product(narrow, coupled):
    from gnvpro.joint import JointProblem

    model, x, y = narrow
    split = split_model(model, probe=x)
    fast, slow = (JointProblem(split, loss, x, y, 1e-3, 1e-4, coupled=coupled)
                  for loss in (make_loss("least_squares"), _NoScalarHessian()))
    W = split.head_weights().to(torch.float64)
    z = fast.pack(fast.features.layout.flatten(split.feature_params(), torch.float64).detach(), W)
    Hf, Hs = fast.gn_operator(fast.evaluate(z)), slow.gn_operator(slow.evaluate(z))
    for seed in range(3):
        v = _vec(z.numel(), seed)
        assert torch.allclose(Hf(v), Hs(v), rtol=1e-11, atol=1e-14)


class _NamedHead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.body = mlp(3, [6], 4, dtype=torch.float64, generator=g)[:-1]
        self.out = torch.nn.Linear(6, 7).double()

    def forward(self, x):
        return self.out(torch.tanh(self.body(x)))


def test_named_head_features_without_touching_the_model():
    """A non-Sequential model runs to a pre-hook on its head: same features, no module swapped,
    no hook left behind, and every J_Z mode gives the same Gauss-Newton product."""
    model = _NamedHead()
    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    y = torch.randn(12, 7, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    split = split_model(model, head="out", probe=x)
    head_before = model.out
    z = split.features(dict(split.feature_params()), x)
    assert torch.allclose(z, torch.tanh(model.body(x)), rtol=0, atol=0)
    assert model.out is head_before and not model.out._forward_pre_hooks
    products = []
    for mode in ("double-backward", "jvp", "linearize"):
        obj = ReducedObjective(split, make_loss("least_squares"), x, y, 1e-3, 1e-4, jvp_mode=mode)
        H = obj.gn_operator(obj.evaluate(_theta(obj)))
        products.append(H(_vec(_theta(obj).numel(), 8)))
    assert torch.allclose(products[1], products[0], rtol=1e-11)
    assert torch.allclose(products[2], products[0], rtol=1e-11)
    assert not model.out._forward_pre_hooks
