"""The shared training interface: GNvpro, joint GN (coupled / block-diagonal), L-BFGS-VarPro,
ADAM and SGD on tiny float64 problems; joint GN's derivatives against autograd / torch.func."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.func import jacrev

from gnvpro.head import split_model
from gnvpro.joint import JointProblem
from gnvpro.linalg.line_search import strong_wolfe
from gnvpro.losses import make_loss
from gnvpro.varpro import ReducedObjective
from gnvpro_experiments.models import paper_network, time_smoothness
from gnvpro_experiments.problems.base import Split
from gnvpro_experiments.train import METHODS, train

DT = torch.float64
ALL = ["gnvpro", "gn", "gn-blockdiag", "lbfgs-vpro", "adam", "sgd"]
MAX_WORK = 40.0
MAX_KRYLOV = 4
REQUIRED = {"iteration", "loss", "work_units", "seconds", "inner_seconds", "metrics"}


def _inputs(n: int, gen: torch.Generator) -> torch.Tensor:
    return 2 * torch.rand(n, 4, generator=gen, dtype=DT) - 1


def regression_data(n: int = 64, seed: int = 0) -> Split:
    """Smooth targets c(y) = (sin(y1 + y2), cos(2 y3) y4, tanh(y1 − y4))."""
    gen = torch.Generator().manual_seed(seed)

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [torch.sin(x[:, 0] + x[:, 1]), torch.cos(2 * x[:, 2]) * x[:, 3],
             torch.tanh(x[:, 0] - x[:, 3])], 1)

    x, xv = _inputs(n, gen), _inputs(32, gen)
    return Split(x, f(x), xv, f(xv), xv, f(xv))


def classification_data(n: int = 64, seed: int = 0) -> Split:
    """Three classes: argmax of (3 y1 y2, sin(3 y3), y4 − y1)."""
    gen = torch.Generator().manual_seed(seed)

    def f(x: torch.Tensor) -> torch.Tensor:
        s = torch.stack([3 * x[:, 0] * x[:, 1], torch.sin(3 * x[:, 2]), x[:, 3] - x[:, 0]], 1)
        return s.argmax(1)

    x, xv = _inputs(n, gen), _inputs(32, gen)
    return Split(x, f(x), xv, f(xv), xv, f(xv))


def tiny_model(width: int = 4, seed: int = 1, n_nodes: int = 2) -> torch.nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    return paper_network(4, 3, width, n_nodes=n_nodes, generator=gen)


def flat_theta(split) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in split.feature_params().values()])


def settings_for(task: str, method: str = "", **kw) -> dict:
    loss = "least_squares" if task == "regression" else "cross_entropy"
    base = dict(loss=loss, alpha_w=1e-4, alpha_theta=1e-6, max_work=MAX_WORK, lr=1e-2,
                batch_size=16)
    if method.startswith(("gnvpro", "gn")):  # the Gauss-Newton descents' product cap
        base["descent"] = {"max_products": MAX_KRYLOV}
    base.update(kw)
    return base


@pytest.fixture(scope="module")
def runs() -> dict:
    """Every method on both tiny problems, from the same θ0: {(task, method): (records, model)}."""
    out = {}
    for task, data in (("regression", regression_data()), ("classification",
                                                           classification_data())):
        model0 = tiny_model()
        for method in ALL:
            model = copy.deepcopy(model0)
            out[task, method] = (train(method, model, data, settings_for(task, method)), model,
                                 data)
    return out


# ----------------------------------------------------------------------------- interface
def test_registry_and_unknown_method() -> None:
    sub_batch = {"gnvpro-stochastic", "gn-stochastic", "lbfgs-vpro-stochastic"}
    assert set(ALL) | sub_batch | {"gnvpro-tn", "gnvpro-tn-stochastic"} == set(METHODS)
    with pytest.raises(ValueError, match="gn-blockdiag.*lbfgs-vpro"):
        train("newton", tiny_model(), regression_data(), {})


@pytest.mark.parametrize("task", ["regression", "classification"])
@pytest.mark.parametrize("method", ALL)
def test_method_trains_and_records(runs: dict, task: str, method: str) -> None:
    records, model, data = runs[task, method]
    assert len(records) >= 2
    for i, rec in enumerate(records):
        assert REQUIRED <= set(rec), REQUIRED - set(rec)
        assert rec["iteration"] == i
        assert set(rec["metrics"]) == {"train", "val"}
        assert math.isfinite(rec["loss"])
    assert records[0]["work_units"] == 2.0
    # the training objective went down clearly
    assert records[-1]["loss"] < 0.9 * records[0]["loss"]
    if task == "classification":
        assert records[-1]["metrics"]["train"]["accuracy"] > records[0]["metrics"]["train"][
            "accuracy"]
    # cumulative counters increase; the budget (2 + max_work) is overshot by one iteration at most
    work = [r["work_units"] for r in records]
    assert all(b > a for a, b in zip(work, work[1:], strict=False))
    secs = [r["seconds"] for r in records]
    assert all(b >= a for a, b in zip(secs, secs[1:], strict=False))
    inner = [r["inner_seconds"] for r in records]
    assert all(b >= a for a, b in zip(inner, inner[1:], strict=False))
    budget = 2.0 + MAX_WORK
    assert work[-2] < budget <= work[-1]
    steps = [b - a for a, b in zip(work, work[1:], strict=False)]
    if method in ("adam", "sgd"):
        assert steps == [2.0] * (len(records) - 1)
        assert len(records) == 1 + int(MAX_WORK // 2)
    elif method == "lbfgs-vpro":
        assert min(steps) >= 2.0 and max(steps) <= 2 * 25
    else:  # one Krylov basis (≤ 2 max_krylov) + trial value + gradient
        assert max(steps) <= 2 * MAX_KRYLOV + 2
    # the model holds the final iterate (no keep_best_val here)
    loss = make_loss(settings_for(task)["loss"])
    with torch.no_grad():
        S = model(data.x_train)
    C = loss.prepare_targets(data.y_train, 3).to(DT)
    assert float(loss.value(S, C)) / len(S) == pytest.approx(records[-1]["data_loss"], rel=1e-8)


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_all_methods_start_from_the_same_point(runs: dict, task: str) -> None:
    first = [runs[task, m][0][0] for m in ALL]
    for rec in first:
        assert rec["loss"] == pytest.approx(first[0]["loss"], rel=1e-9)
        assert rec["metrics"]["train"]["loss"] == pytest.approx(
            first[0]["metrics"]["train"]["loss"], rel=1e-9)


def test_sgd_epochs_follow_the_budget() -> None:
    recs = train("sgd", tiny_model(), regression_data(), settings_for("regression", max_work=7))
    assert [r["work_units"] for r in recs] == [2.0, 4.0, 6.0, 8.0]  # floor(7/2) = 3 epochs
    recs = train("adam", tiny_model(), regression_data(),
                 settings_for("regression", max_work=40, max_iter=2))
    assert len(recs) == 3 and recs[-1]["termination"] == "iteration limit reached"


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_adam_keep_best_val_restores_best_iterate(task: str) -> None:
    data = regression_data() if task == "regression" else classification_data()
    s = settings_for(task, lr=0.1, batch_size=8, max_work=30, keep_best_val=True)
    model = tiny_model()
    recs = train("adam", model, data, s)
    key, sign = ("accuracy", 1.0) if task == "classification" else ("loss", -1.0)
    scores = [sign * r["metrics"]["val"][key] for r in recs]
    best = max(range(len(recs)), key=lambda i: (scores[i], -i))  # first best
    assert [i for i, r in enumerate(recs) if r["best_val"]][-1] == best
    assert best < len(recs) - 1  # a large step size: the best iterate is not the last one
    loss = make_loss(s["loss"])
    with torch.no_grad():
        S = model(data.x_val)
        C = loss.prepare_targets(data.y_val, 3).to(DT)
        val_loss = float(loss.value(S, C)) / len(S)
        assert val_loss == pytest.approx(recs[best]["metrics"]["val"]["loss"], rel=1e-10)
        S_train = model(data.x_train)
        C_train = loss.prepare_targets(data.y_train, 3).to(DT)
        train_loss = float(loss.value(S_train, C_train)) / len(S_train)
        assert train_loss == pytest.approx(recs[best]["data_loss"], rel=1e-10)


# ------------------------------------------------------------------------- joint GN maths
def _joint(loss_name: str, alpha_theta: float = 1e-2, alpha_w: float = 0.3, coupled: bool = True,
           n: int = 10):
    """A JointProblem on a 3-node ResNet with the time-smoothness regulariser, at random W."""
    model = tiny_model(width=3, seed=2, n_nodes=3)
    data = regression_data(n) if loss_name == "least_squares" else classification_data(n)
    split = split_model(model)
    loss = make_loss(loss_name)
    prob = JointProblem(split, loss, data.x_train, data.y_train, alpha_w, alpha_theta,
                        B=time_smoothness(model), coupled=coupled)
    gen = torch.Generator().manual_seed(5)
    W = torch.randn(prob.w_shape, generator=gen, dtype=DT)
    z = prob.pack(flat_theta(split), W)
    return prob, z, split, data


def _phi_autograd(prob: JointProblem, split, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    theta, W = prob.unpack(z)
    Z = split.features(prob.features.layout.unflatten(theta), x)
    S = torch.cat([Z, torch.ones(len(Z), 1, dtype=DT)], 1) @ W.T
    return (prob.loss.value(S, prob.C) / len(S) + 0.5 * prob.alpha_w * W.square().sum()
            + prob.reg.value(theta))


def _predictions(prob: JointProblem, split, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    theta, W = prob.unpack(z)
    Z = split.features(prob.features.layout.unflatten(theta), x)
    return (torch.cat([Z, torch.ones(len(Z), 1, dtype=DT)], 1) @ W.T).reshape(-1)


@pytest.mark.parametrize("loss_name", ["least_squares", "cross_entropy"])
def test_joint_gradient_matches_autograd(loss_name: str) -> None:
    prob, z, split, data = _joint(loss_name)
    pt = prob.evaluate(z)
    zz = z.clone().requires_grad_(True)
    phi = _phi_autograd(prob, split, data.x_train, zz)
    (ref,) = torch.autograd.grad(phi, zz)
    assert pt.value == pytest.approx(float(phi.detach()), rel=1e-13)
    g = prob.gradient(pt)
    assert torch.allclose(g, ref, rtol=1e-10, atol=1e-12)
    assert float(ref[prob.n_theta :].norm()) > 1e-3  # W is not W*: both blocks are exercised


def _dense(op, N: int) -> torch.Tensor:
    return torch.stack([op(e) for e in torch.eye(N, dtype=DT)], 1)


@pytest.mark.parametrize("loss_name", ["least_squares", "cross_entropy"])
def test_joint_gn_operator_matches_dense_jacobian(loss_name: str) -> None:
    prob, z, split, data = _joint(loss_name)
    pt = prob.evaluate(z)
    N = z.numel()
    J = jacrev(lambda v: _predictions(prob, split, data.x_train, v))(z)  # (n c) × N
    S = pt.S
    nc = S.numel()
    Hs = torch.stack([prob.loss.hess_apply(S, prob.C, e.reshape(S.shape)).reshape(-1)
                      for e in torch.eye(nc, dtype=DT)], 1) / S.shape[0]  # a mean over rows
    Bm = jacrev(prob.reg.apply_B)(z[: prob.n_theta])
    reg = torch.block_diag(prob.reg.alpha * Bm.T @ Bm,
                           prob.alpha_w * torch.eye(N - prob.n_theta, dtype=DT))
    H_ref = J.T @ Hs @ J + reg
    H = _dense(prob.gn_operator(pt), N)
    assert torch.allclose(H, H_ref, rtol=1e-9, atol=1e-11)
    assert torch.allclose(H, H.T, rtol=1e-10, atol=1e-12)
    assert float(torch.linalg.eigvalsh(H).min()) > -1e-10 * float(H.abs().max())
    # the block-diagonal variant is exactly the block diagonal of the coupled matrix
    prob.coupled = False
    H_bd = _dense(prob.gn_operator(pt), N)
    k = prob.n_theta
    mask = torch.zeros(N, N, dtype=torch.bool)
    mask[:k, :k] = True
    mask[k:, k:] = True
    assert torch.allclose(H_bd, torch.where(mask, H, torch.zeros_like(H)), rtol=1e-10, atol=1e-12)
    assert float(H[:k, k:].abs().max()) > 1e-6  # the coupling is not trivially zero


def test_joint_value_at_w_star_is_the_reduced_objective() -> None:
    prob, z, split, data = _joint("cross_entropy")
    red = ReducedObjective(split, prob.loss, data.x_train, data.y_train, prob.alpha_w,
                           prob.reg.alpha, B=prob.reg.B)
    rpt = red.evaluate(z[: prob.n_theta])
    jpt = prob.evaluate(prob.pack(rpt.theta, rpt.W))
    assert jpt.value == pytest.approx(rpt.value, rel=1e-13)
    g = prob.gradient(jpt)
    assert torch.allclose(g[: prob.n_theta], red.gradient(rpt), rtol=1e-9, atol=1e-12)
    assert float(g[prob.n_theta :].norm()) < 1e-8  # ∇_W Φ(θ, W*) = 0


def test_joint_problem_rejects_bad_batches() -> None:
    prob, _, split, data = _joint("cross_entropy")
    x, y = data.x_train.clone(), data.y_train

    def make(x_, y_):
        return JointProblem(split, prob.loss, x_, y_, 1e-3, 1e-3)

    x[2, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        make(x, y)
    with pytest.raises(ValueError, match="must match in dim 0"):
        make(data.x_train, y[:-1])
    bad = y.clone()
    bad[0] = 99
    with pytest.raises(ValueError, match="out of range|class"):
        make(data.x_train, bad)


# ----------------------------------------------------------------------------- L-BFGS
def test_strong_wolfe_on_a_one_dimensional_function() -> None:
    f = lambda a: (a - 3.0) ** 4 - 2.0 * a  # noqa: E731
    df = lambda a: 4.0 * (a - 3.0) ** 3 - 2.0  # noqa: E731
    f0, df0 = f(0.0), df(0.0)
    for alpha1 in (1e-3, 1.0, 50.0):
        res = strong_wolfe(f, df, f0, df0, alpha1, c1=1e-4, c2=0.9)
        a = res.alpha
        assert res.wolfe and a is not None
        assert f(a) <= f0 + 1e-4 * a * df0
        assert abs(df(a)) <= 0.9 * abs(df0)
    with pytest.raises(ValueError):
        strong_wolfe(f, df, f0, 1.0)


def test_lbfgs_line_searches_satisfy_wolfe(runs: dict) -> None:
    for task in ("regression", "classification"):
        recs = runs[task, "lbfgs-vpro"][0][1:]
        assert all(r["wolfe"] for r in recs)
        losses = [r["loss"] for r in recs]
        assert all(b < a for a, b in zip(losses, losses[1:], strict=False))


def test_repr_states_the_settings():
    """repr names the loss, α, the head and the settings that differ from the defaults."""
    from gnvpro import FirstOrder, FirstOrderConfig, GNvpro, GNvproConfig

    m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    r = repr(GNvpro(m, loss="logistic", alpha_w=1e-4, config=GNvproConfig.trust_region()))
    assert r == ("GNvpro(loss='logistic', alpha_w=0.0001, alpha_theta=1e-10, head='2', "
                 "config=GNvproConfig(inner_forcing=0.0, "
                 "descent=LanczosSubspace(max_products=20, rtol=0.01), "
                 "search=TrustRegion(rule=RadiusRule(eta_reject=0.0001, eta_shrink=0.1, "
                 "eta_expand=0.75, shrink=0.5, expand=1.5, max_radius_per_grad=10000.0), "
                 "min_radius=1e-14, extrapolate=False)))"), r
    r = repr(FirstOrder(m, config=FirstOrderConfig(optimizer="sgd", lr=0.1)))
    assert "optimizer='sgd'" in r and "lr=0.1" in r, r
