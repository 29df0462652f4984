"""Classification half of GNvpro: cross-entropy and logistic losses, exact inner Newton solve.

Float64, tiny models (mlp(3, [5, 4], c), 40 samples). Checks of docs/method.md §7: Taylor tests of
Φ_red and of the reduced predictions S(θ) = Ẑ(θ) W*(θ)ᵀ, adjoint tests of J_S and J_W, the
envelope gradient against autograd through an implicit-function W*(θ), J_W against finite
differences, H_GN against a dense J_Sᵀ H_S J_S + α_W J_Wᵀ J_W + α_θ I built with torch.func,
the Kaufman variant; then GNvpro through the public API (records, non-convergence reporting,
clear errors) and the ellipse toy of docs/experiments.md §1.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from torch.func import jacrev

import gnvpro
from gnvpro import GNvpro, GNvproConfig, ReducedObjective, make_loss, split_model
from gnvpro.checks import adjoint_test, taylor_test
from gnvpro.inner import dense_hessian, solve_newton
from gnvpro.reduce import SampleReducer
from gnvpro.varpro import InnerOptions
from gnvpro_experiments.models import mlp
from gnvpro_experiments.problems.ellipse import ellipse_data
from gnvpro_experiments.problems.images import FASHION_MNIST_DIR

DT = torch.float64
ALPHA_T = 1e-3
TIGHT = InnerOptions(rtol=1e-13, atol=1e-13, max_iter=100)
# (loss, number of outputs c, α_W)
CASES = [("cross_entropy", 3, 1e-2), ("logistic", 1, 1e-3)]
IDS = [case[0] for case in CASES]


# ------------------------------------------------------------------------------ helpers
def _labels(x: torch.Tensor, c: int, gen: torch.Generator, noise: float = 0.7) -> torch.Tensor:
    """Labels of a noisy linear model (not separable, so W* stays moderate); all classes occur."""
    k = max(c, 2)
    A = torch.randn(x.shape[1], k, generator=gen, dtype=DT)
    scores = x @ A + noise * torch.randn(x.shape[0], k, generator=gen, dtype=DT)
    y = scores.argmax(dim=1)
    y[:k] = torch.arange(k)  # make sure every class is present
    return y


def _objective(loss: str, c: int, alpha_w: float, n: int = 40, seed: int = 0, **kw):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen, dtype=DT)
    y = _labels(x, c, gen)
    model = mlp(3, [5, 4], c, activation="tanh", dtype=DT, generator=gen)
    split = split_model(model, probe=x)
    kw.setdefault("inner", TIGHT)
    obj = ReducedObjective(split, make_loss(loss), x, y, alpha_w, ALPHA_T, **kw)
    theta = obj.features.layout.flatten(split.feature_params(), DT).detach()
    return obj, theta


def _direction(theta: torch.Tensor, seed: int) -> torch.Tensor:
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(seed), dtype=DT)
    return v / v.norm()


def _features_h(obj: ReducedObjective, theta: torch.Tensor) -> torch.Tensor:
    """Ẑ(θ) = [Z(θ), 1], differentiable in θ (autograd and torch.func)."""
    return obj.augment(obj.split.features(obj.features.params(theta), obj.features.x))


class _ImplicitW(torch.autograd.Function):
    """W*(Ẑ) by a tight Newton solve; backward by the implicit function theorem.

    Optimality F(W, Ẑ) = Gᵀ Ẑ + α_W W = 0 gives dW = −H_W⁻¹ B_Z[dẐ] with
    B_Z[dẐ] = H_S[dẐ Wᵀ]ᵀ Ẑ + Gᵀ dẐ, so the adjoint is
    ∂/∂Ẑ = −(H_S[Ẑ Yᵀ] W + G Y),  Y = H_W⁻¹[∂/∂W]  (H_W: the dense matrix, Cholesky).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(Zh, C, loss, alpha_w):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # an unconverged W* fails the test
            sol = solve_newton(loss, Zh.detach(), C, alpha_w, SampleReducer(len(Zh)), rtol=1e-13,
                               atol=1e-13)
        return sol.W

    @staticmethod
    def setup_context(ctx, inputs, output):
        Zh, C, loss, alpha_w = inputs
        W = output
        L = torch.linalg.cholesky(dense_hessian(loss, Zh @ W.T, C, Zh, alpha_w,
                                                SampleReducer(len(Zh))))
        ctx.save_for_backward(Zh, W, L)
        ctx.loss, ctx.C = loss, C

    @staticmethod
    def backward(ctx, gW):
        Zh, W, L = ctx.saved_tensors
        loss, C = ctx.loss, ctx.C
        Y = torch.cholesky_solve(gW.reshape(-1, 1), L).reshape(W.shape)
        S = Zh @ W.T
        gZh = -(loss.hess_apply(S, C, Zh @ Y.T) @ W + loss.grad(S, C) @ Y) / len(Zh)
        return gZh, None, None, None


def _w_star(obj: ReducedObjective, theta: torch.Tensor) -> torch.Tensor:
    return _ImplicitW.apply(_features_h(obj, theta), obj.C, obj.loss, obj.alpha_w)


def _s_star(obj: ReducedObjective, theta: torch.Tensor) -> torch.Tensor:
    Zh = _features_h(obj, theta)
    return Zh @ _ImplicitW.apply(Zh, obj.C, obj.loss, obj.alpha_w).T


def _dense_hs(obj: ReducedObjective, S: torch.Tensor) -> torch.Tensor:
    """blockdiag_i(H_i)/n (the averaged loss's H_S) as an (n·c) × (n·c) matrix, ordered as
    S.reshape(-1)."""
    N = S.numel()
    eye = torch.eye(N, dtype=DT)
    cols = [obj.reducer.scale(obj.loss.hess_apply(S, obj.C, eye[k].reshape(S.shape))).reshape(-1)
            for k in range(N)]
    return torch.stack(cols, dim=1)


# ------------------------------------------------------------------------ derivative checks
@pytest.mark.parametrize(("loss", "c", "alpha_w"), CASES, ids=IDS)
def test_taylor_reduced_objective(loss, c, alpha_w):
    obj, th = _objective(loss, c, alpha_w)
    pt = obj.evaluate(th)
    assert pt.inner.converged and pt.inner.iterations > 0
    g = obj.gradient(pt)
    v = _direction(th, 1)

    def phi(t):
        return torch.tensor(obj.evaluate(t, with_vjp=False).value, dtype=DT)

    res = taylor_test(phi, th, v, g @ v, h0=0.5, n=10)
    assert res.best_order() > 1.8, res.orders
    # the test can tell: a 10 % wrong gradient is only first order
    bad = taylor_test(phi, th, v, 1.1 * (g @ v), h0=0.5, n=10)
    assert bad.orders[-1] < 1.2, bad.orders


@pytest.mark.parametrize(("loss", "c", "alpha_w"), CASES, ids=IDS)
def test_taylor_reduced_predictions(loss, c, alpha_w):
    obj, th = _objective(loss, c, alpha_w)
    jac = obj.jacobian(obj.evaluate(th))
    v = _direction(th, 2)
    dS, _ = jac.forward(v)
    res = taylor_test(lambda t: obj.evaluate(t, with_vjp=False).S, th, v, dS, h0=0.5, n=10)
    assert res.best_order() > 1.8, res.orders
    # without dW (Kaufman) S(θ) is only matched to first order: the full J_S is needed
    dS_k = torch.nn.functional.pad(obj.features.jvp_fn(th)(v), (0, 1)) @ jac.pt.W.T
    res_k = taylor_test(lambda t: obj.evaluate(t, with_vjp=False).S, th, v, dS_k, h0=0.5, n=10)
    assert res_k.orders[-1] < 1.2, res_k.orders


@pytest.mark.parametrize("jacobian", ["full", "kaufman"])
@pytest.mark.parametrize(("loss", "c", "alpha_w"), CASES, ids=IDS)
def test_adjoints(loss, c, alpha_w, jacobian):
    obj, th = _objective(loss, c, alpha_w, jacobian=jacobian)
    pt = obj.evaluate(th)
    jac = obj.jacobian(pt)
    gen = torch.Generator().manual_seed(3)
    zero = torch.zeros_like(pt.S)
    for _ in range(3):
        v = torch.randn(th.shape, generator=gen, dtype=DT)
        X = torch.randn(pt.S.shape, generator=gen, dtype=DT)
        err_s = adjoint_test(lambda u: jac.forward(u)[0], lambda Y: jac.adjoint(Y, None), v, X)
        assert err_s < 1e-10
        if jacobian == "full":
            R = torch.randn(pt.W.shape, generator=gen, dtype=DT)
            err_w = adjoint_test(lambda u: jac.forward(u)[1], lambda Y: jac.adjoint(zero, Y), v, R)
            assert err_w < 1e-10
        else:
            assert torch.count_nonzero(jac.forward(v)[1]) == 0


@pytest.mark.parametrize(("loss", "c", "alpha_w"), CASES, ids=IDS)
def test_envelope_gradient_equals_implicit_autograd(loss, c, alpha_w):
    obj, th = _objective(loss, c, alpha_w)
    pt = obj.evaluate(th)
    g = obj.gradient(pt)

    t = th.clone().requires_grad_(True)
    Zh = _features_h(obj, t)
    W = _ImplicitW.apply(Zh, obj.C, obj.loss, obj.alpha_w)
    phi = obj.loss.value(Zh @ W.T, obj.C) / obj.n + 0.5 * alpha_w * W.square().sum()
    phi = phi + 0.5 * ALPHA_T * t.square().sum()
    (g_auto,) = torch.autograd.grad(phi, t)
    assert abs(phi.item() - pt.value) < 1e-12 * max(1.0, abs(pt.value))
    assert torch.allclose(W.detach(), pt.W, rtol=0, atol=1e-10)
    assert float((g_auto - g).norm()) <= 1e-8 * float(g.norm())


@pytest.mark.parametrize(("loss", "c", "alpha_w"), CASES, ids=IDS)
def test_jw_matches_finite_differences_and_implicit_autograd(loss, c, alpha_w):
    obj, th = _objective(loss, c, alpha_w)
    jac = obj.jacobian(obj.evaluate(th))
    v = _direction(th, 4)
    _, dW = jac.forward(v)
    assert float(dW.norm()) > 1e-3  # a real, non-trivial derivative

    h = 1e-5
    fd = (obj.evaluate(th + h * v, with_vjp=False).W - obj.evaluate(th - h * v, with_vjp=False).W)
    fd = fd / (2 * h)
    assert float((fd - dW).norm()) <= 1e-6 * float(dW.norm())

    # the implicit-function reference agrees (forward mode through its backward: jvp by jacrev)
    J_W = jacrev(lambda t: _w_star(obj, t))(th)
    assert torch.allclose(J_W @ v, dW, rtol=0, atol=1e-9 * float(dW.norm()))


@pytest.mark.parametrize(("loss", "c", "alpha_w"), CASES, ids=IDS)
def test_gauss_newton_equals_dense_construction(loss, c, alpha_w):
    obj, th = _objective(loss, c, alpha_w)
    pt = obj.evaluate(th)
    jac = obj.jacobian(pt)
    P = th.numel()

    J_S = jacrev(lambda t: _s_star(obj, t))(th).reshape(-1, P)  # (n·c, P)
    J_W = jacrev(lambda t: _w_star(obj, t))(th).reshape(-1, P)  # (c·p, P)
    H_S = _dense_hs(obj, pt.S)
    H_dense = J_S.T @ H_S @ J_S + alpha_w * J_W.T @ J_W + ALPHA_T * torch.eye(P, dtype=DT)

    eye = torch.eye(P, dtype=DT)
    H = torch.stack([jac.gauss_newton(eye[k]) for k in range(P)], dim=1)
    scale = float(H_dense.norm())
    assert float((H - H_dense).norm()) <= 1e-7 * scale
    assert float((H - H.T).norm()) <= 1e-10 * scale
    assert float(torch.linalg.eigvalsh(0.5 * (H + H.T)).min()) >= -1e-12 * scale
    # α_W J_Wᵀ J_W is genuinely in there (gn_alpha_w=True) ...
    assert float((alpha_w * J_W.T @ J_W).norm()) > 1e3 * 1e-7 * scale
    # ... and switching it off removes exactly that term
    obj_off, _ = _objective(loss, c, alpha_w, gn_alpha_w=False)
    jac_off = obj_off.jacobian(obj_off.evaluate(th))
    H_off = torch.stack([jac_off.gauss_newton(eye[k]) for k in range(P)], dim=1)
    assert float((H_off - (H_dense - alpha_w * J_W.T @ J_W)).norm()) <= 1e-7 * scale

    # random quadratic forms: vᵀ H v = ‖J_S v‖²_{H_S} + α_W ‖J_W v‖² + α_θ ‖v‖² ≥ 0
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        v = torch.randn(P, generator=gen, dtype=DT)
        dS, dW = jac.forward(v)
        q = (dS * obj.loss.hess_apply(pt.S, obj.C, dS)).sum() / obj.n + alpha_w * dW.square().sum()
        q = q + ALPHA_T * v.square().sum()
        assert float(v @ jac.gauss_newton(v)) == pytest.approx(float(q), rel=1e-10)
        assert float(q) > 0


@pytest.mark.parametrize(("loss", "c", "alpha_w"), CASES, ids=IDS)
def test_kaufman_is_jtilde_hs_jtilde(loss, c, alpha_w):
    obj, th = _objective(loss, c, alpha_w, jacobian="kaufman")
    pt = obj.evaluate(th)
    jac = obj.jacobian(pt)
    P = th.numel()
    W = pt.W.detach()
    J_t = jacrev(lambda t: _features_h(obj, t) @ W.T)(th).reshape(-1, P)  # dW = 0
    H_dense = J_t.T @ _dense_hs(obj, pt.S) @ J_t + ALPHA_T * torch.eye(P, dtype=DT)
    eye = torch.eye(P, dtype=DT)
    H = torch.stack([jac.gauss_newton(eye[k]) for k in range(P)], dim=1)
    assert float((H - H_dense).norm()) <= 1e-7 * float(H_dense.norm())
    # and it differs from the full operator (dW matters here)
    obj_f, _ = _objective(loss, c, alpha_w)
    jac_f = obj_f.jacobian(obj_f.evaluate(th))
    H_f = torch.stack([jac_f.gauss_newton(eye[k]) for k in range(P)], dim=1)
    assert float((H_f - H).norm()) > 1e-4 * float(H_f.norm())


# ------------------------------------------------------------------------------ public API
def _api_problem(n: int = 60, seed: int = 0, separable: bool = False, scale: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(n, 3, generator=gen, dtype=DT)
    y = _labels(x, 3, gen, noise=0.0 if separable else 0.7)
    model = mlp(3, [5, 4], 3, activation="tanh", dtype=DT, generator=gen)
    return model, x, y


def test_gnvpro_cross_entropy_records_inner_solve():
    model, x, y = _api_problem()
    opt = GNvpro(model, loss="cross_entropy", alpha_w=1e-2, alpha_theta=1e-3,
                 config=GNvproConfig(inner_forcing=0.0))  # exact: ‖∇_W Φ‖ ≤ 1e-10
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the inner solve must converge
        hist = opt.run(x, y, max_iter=8)
    recs = hist.records
    assert len(recs) == 8
    assert recs[-1].loss < recs[0].loss
    assert all(r.inner_converged and r.status == "ok" for r in recs)
    assert all(r.inner_iterations >= 1 for r in recs)
    assert all(0.0 <= r.inner_grad_norm < 1e-8 for r in recs)
    assert all(r.inner_seconds > 0 for r in recs)
    assert all(b.inner_seconds >= a.inner_seconds for a, b in zip(recs, recs[1:], strict=False))
    assert 0.0 <= recs[-1].metrics["train"]["accuracy"] <= 1.0
    # the model holds W*(θ): its head is optimal for the accepted features
    obj = opt.objective
    W = split_model(model).head_weights().to(DT)
    Zh = obj.augment(model[:-1](x).detach())
    S = Zh @ W.T
    grad_w = obj.loss.grad(S, obj.C).T @ Zh / len(x) + 1e-2 * W
    assert float(grad_w.norm()) < 1e-8
    assert torch.allclose(model(x), S, rtol=0, atol=1e-12)


def test_unconverged_inner_solve_is_reported():
    # separable, widely spread data and a tiny α_W: W* is large, one Newton step is not enough
    model, x, y = _api_problem(separable=True, scale=5.0)
    cfg = GNvproConfig(inner_max_iter=1)
    opt = GNvpro(model, loss="cross_entropy", alpha_w=1e-6, alpha_theta=1e-3, config=cfg)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        rec = opt.step(x, y)
    assert not rec.inner_converged
    assert rec.inner_iterations == 1
    assert "not converged" in rec.status and "max_iter=1" in rec.status
    assert rec.inner_grad_norm > 1e-10


@pytest.mark.parametrize(
    ("loss", "c", "make_y", "match"),
    [
        ("cross_entropy", 3, lambda y: torch.where(y == 2, 3, y), r"must lie in \[0, 3\)"),
        ("cross_entropy", 3, lambda y: torch.full_like(y, 1), "only one class"),
        ("logistic", 1, lambda y: torch.zeros_like(y), "only one class"),
        ("logistic", 1, lambda y: y + 1, "must be 0 or 1"),
    ],
    ids=["ce-out-of-range", "ce-one-class", "logistic-one-class", "logistic-out-of-range"],
)
def test_clear_label_errors(loss, c, make_y, match):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, generator=gen, dtype=DT)
    y = make_y(_labels(x, c, gen))
    opt = GNvpro(mlp(3, [5, 4], c, dtype=DT, generator=gen), loss=loss, alpha_w=1e-2)
    with pytest.raises(ValueError, match=match):
        opt.step(x, y)


@pytest.mark.parametrize("row", [0, 25])  # inside and outside the 16-row head probe
def test_clear_error_nonfinite_features(row):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, generator=gen, dtype=DT)
    y = _labels(x, 3, gen)
    x[row, 1] = float("nan")
    opt = GNvpro(mlp(3, [5, 4], 3, dtype=DT, generator=gen), loss="cross_entropy", alpha_w=1e-2)
    with pytest.raises(ValueError, match="NaN"):
        opt.step(x, y)


# ------------------------------------------------------------------------------ ellipse toy
def test_ellipse_reaches_99_percent():
    """docs/experiments.md §1 through the API, as examples/ellipse.py (seed 0): 5000 training
    points, 2→4→4→2 tanh features + affine 1×3 head, logistic loss, α_θ = 1e-6, α_W = 1e-8,
    Krylov 10 / 1e-3, 50 outer iterations. True accuracy = mean(pred == label)."""
    seed = 0
    data = ellipse_data(seed=seed)
    assert data.sizes() == (5000, 1000, 8000)
    model = mlp(2, [4, 4, 2], 1, activation="tanh", generator=torch.Generator().manual_seed(seed))
    cfg = GNvproConfig(descent=gnvpro.PreconditionedCG(max_products=10, rtol=1e-3))
    opt = gnvpro.GNvpro(model, loss="logistic", alpha_theta=1e-6, alpha_w=1e-8, config=cfg)
    hist = opt.run(data.x_train, data.y_train, max_iter=50)
    assert len(hist.records) == 50
    assert all(r.inner_converged for r in hist.records)
    with torch.no_grad():
        pred = (model(data.x_test)[:, 0] > 0).long()
    acc = float((pred == data.y_test).double().mean())
    assert acc >= 0.99
    assert opt.evaluate(data.x_test, data.y_test)["accuracy"] == pytest.approx(acc)


# ------------------------------------------------------------------------- example scripts
def _load_example(name: str):
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ellipse_example_script_runs(tmp_path, capsys):
    res = _load_example("ellipse").main(["--iters", "3", "--out", str(tmp_path)])
    assert (tmp_path / "ellipse_boundary_seed0.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "test acc" in out and f"{res['test']:.4f}" in out
    assert len(res["history"].records) == 3


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Fashion-MNIST is not installed")
def test_fashion_mnist_example_script_runs(capsys):
    res = _load_example("fashion_mnist_mlp").main(["--subset", "300", "--max-work", "20"])
    assert res["work_units"] >= 20 and res["inner_not_converged"] == 0
    assert res["test"] > 0.3  # 10 classes: well above chance after a couple of GN steps
    assert "test acc" in capsys.readouterr().out
