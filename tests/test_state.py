"""The solver state is a value: state_dict() is the state (θ in float64, W, the gradient, radius,
Krylov basis, curvature pairs, counters), load_state_dict assigns it, and a run killed after any
step and resumed from a checkpoint file gives the uninterrupted numbers bit for bit, for every
method, in float32 and float64, on least squares and cross-entropy (issue 19, item 3)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from gnvpro import (
    FirstOrder,
    FirstOrderConfig,
    GNvpro,
    GNvproConfig,
    Hybrid,
    JointGaussNewton,
    JointGNConfig,
    LanczosSubspace,
    LBFGSTwoLoop,
    LBFGSVarPro,
    LBFGSVarProConfig,
    PreconditionedCG,
    RadiusRule,
    Steihaug,
    TrustRegion,
    load_checkpoint,
    save_checkpoint,
)
from gnvpro.solver import SavedPoint, SolverState

KINDS = ["tn", "hybrid", "lanczos", "steihaug", "lbfgs", "joint", "adam", "sgd"]
LOSSES = ["least_squares", "cross_entropy"]
DTYPES = [torch.float32, torch.float64]
BATCH_OF_STEP = [0, 0, 0, 1, 1, 0, 0, 1]  # two batches; killed after step 3: next on the other


def _data(loss: str, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two batches of 24 samples with 3 features; 2 regression targets or 6 classes."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 3, generator=g, dtype=dtype)
    if loss == "least_squares":
        y = torch.stack([torch.sin(x[:, 0]) + x[:, 1] ** 2, torch.cos(x[:, 2]) * x[:, 0]], 1)
    else:
        y = ((x[:, 0] > 0).long() + 2 * (x[:, 1] > 0.3).long() + (x[:, 2] > 0).long()) % 6
    return [(x[:24], y[:24]), (x[24:], y[24:])]


def _model(loss: str, dtype: torch.dtype, seed: int = 1) -> nn.Sequential:
    """3 → 8 → 20 → head (2 outputs, or 6 classes: p(c+1) = 147, so the cross-entropy inner
    solve reuses the previous point's H_W factor, which the state must then carry)."""
    torch.manual_seed(seed)
    c = 2 if loss == "least_squares" else 6
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 20), nn.Tanh(),
                         nn.Linear(20, c)).to(dtype)


def _method(kind: str, model: nn.Module, loss: str):
    a = {"alpha_w": 1e-3 if loss == "cross_entropy" else 1e-8, "alpha_theta": 1e-6}
    if kind == "hybrid":  # probing at every chance: both modes and every phase in 8 steps
        hybrid = Hybrid(max_products=5, probe_after=1, probe_share=0.0)
        return GNvpro(model, loss, config=GNvproConfig(descent=hybrid), **a)
    if kind in ("tn", "lanczos", "steihaug"):
        descent = {"tn": PreconditionedCG, "lanczos": LanczosSubspace, "steihaug": Steihaug}[kind]
        config = (GNvproConfig if kind == "tn" else GNvproConfig.trust_region)(
            descent=descent(max_products=5))
        return GNvpro(model, loss, config=config, **a)
    if kind == "lbfgs":
        return LBFGSVarPro(model, loss, config=LBFGSVarProConfig(descent=LBFGSTwoLoop(memory=4)),
                           **a)
    if kind == "joint":
        return JointGaussNewton(model, loss,
                                config=JointGNConfig(descent=LanczosSubspace(max_products=5)), **a)
    return FirstOrder(model, loss, config=FirstOrderConfig(optimizer=kind, lr=1e-2,
                                                           batch_size=10), **a)


def _steps(opt, batches, schedule) -> list[tuple[float, float, int]]:
    """(Φ, work units, iteration) after each step of the schedule (batch indices)."""
    out = []
    for b in schedule:
        info = opt.step(*batches[b])
        out.append((opt.current().value, opt.work, -1 if info is None else info.iteration))
    return out


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("kill_after", [2, 3])  # next step: on the same batch / the other
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("kind", KINDS)
def test_kill_and_resume_gives_the_uninterrupted_numbers_bit_for_bit(tmp_path: Path, kind, loss,
                                                                     dtype, kill_after):
    batches = _data(loss, dtype)
    model = _model(loss, dtype)
    ref = _steps(_method(kind, model, loss), batches, BATCH_OF_STEP)
    ref_weights = _weights(model)

    model = _model(loss, dtype)
    opt = _method(kind, model, loss)
    got = _steps(opt, batches, BATCH_OF_STEP[:kill_after])
    save_checkpoint(tmp_path / "ck.pt", model, opt)
    del model, opt  # the process dies

    model = _model(loss, dtype, seed=7)  # other weights: the checkpoint's replace them
    opt = _method(kind, model, loss)
    load_checkpoint(tmp_path / "ck.pt", model, opt)
    got += _steps(opt, batches, BATCH_OF_STEP[kill_after:])
    assert got == ref  # exact equality of every Φ, work count and iteration
    for p, q in zip(_weights(model), ref_weights, strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_a_trust_region_killed_after_a_rejection_resumes_in_its_krylov_basis(tmp_path, dtype):
    """After a rejected step the Lanczos basis is kept (the next step costs no products); the
    state carries it, and the resumed run takes the uninterrupted steps."""
    loss = "cross_entropy"
    (x, y), _ = _data(loss, dtype)

    def tr(model):
        strict = RadiusRule(eta_reject=0.9, eta_shrink=0.95, eta_expand=0.99)  # rejects often
        return GNvpro(model, loss, alpha_w=1e-3,
                      config=GNvproConfig.trust_region(descent=LanczosSubspace(max_products=5),
                                                       search=TrustRegion(rule=strict)))

    model = _model(loss, dtype)
    opt, ref, kill = tr(model), [], None
    for k in range(8):
        info = opt.step(x, y)
        ref.append((opt.current().value, opt.work, info.outcome))
        if kill is None and opt.state.basis is not None:
            kill = k + 1
    assert kill is not None, "no rejection: the test would not test the basis"
    ref_weights = _weights(model)

    model = _model(loss, dtype)
    opt = tr(model)
    got = [(opt.step(x, y), opt.current().value, opt.work)[1:] for _ in range(kill)]
    assert opt.state_dict()["basis"]["V"].shape[0] >= 1
    save_checkpoint(tmp_path / "ck.pt", model, opt)
    model = _model(loss, dtype, seed=7)
    opt = tr(model)
    load_checkpoint(tmp_path / "ck.pt", model, opt)
    assert opt.state.basis is not None
    for _ in range(8 - kill):
        info = opt.step(x, y)
        got.append((opt.current().value, opt.work))
    assert got == [r[:2] for r in ref]
    for p, q in zip(_weights(model), ref_weights, strict=True):
        assert torch.equal(p, q)


def test_the_state_dict_is_the_state_and_keeps_theta_in_float64():
    loss, dtype = "cross_entropy", torch.float32
    (x, y), _ = _data(loss, dtype)
    model = _model(loss, dtype)
    opt = _method("tn", model, loss)
    for _ in range(3):
        opt.step(x, y)
    sd = opt.state_dict()
    assert sd["theta"].dtype == sd["W"].dtype == sd["g"].dtype == torch.float64
    assert not torch.equal(sd["theta"], opt.theta())  # more than the float32 model holds
    assert torch.equal(sd["theta"].to(dtype), opt.theta().to(dtype))
    assert sd["factor"] is not None and len(sd["pairs"]) == 3 and sd["iteration"] == 3
    state = SolverState.from_dict(sd)  # the dict is the state: nothing else is needed
    assert isinstance(state.pt, SavedPoint) and torch.equal(state.g, opt.state.g)
    frozen = {k: v.clone() for k, v in sd.items() if isinstance(v, torch.Tensor)}
    opt.step(x, y)  # later steps replace the state's tensors, never change them in place
    assert all(torch.equal(sd[k], v) for k, v in frozen.items())

    again = _method("tn", _model(loss, dtype, seed=3), loss)
    again.load_state_dict(sd)  # an assignment: the counters are there before any batch
    assert again.work == sd["work"] and again.state.iteration == 3
    back = again.state_dict()
    assert back.keys() == sd.keys()
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(back[k], v), k
        elif k not in ("pairs", "basis"):
            assert back[k] == v, k


@pytest.mark.parametrize("kind", KINDS)
def test_every_method_adopts_the_saved_settings_and_refuses_another_loss(kind):
    """As torch.optim adopts a saved param_group's settings: config and α come from the dict;
    the loss is the model's meaning and must be the same; a refused dict changes nothing."""
    loss, dtype = "least_squares", torch.float64
    (x, y), _ = _data(loss, dtype)
    saved = _method(kind, _model(loss, dtype), loss)
    saved.alpha_theta = 1e-4
    saved.step(x, y)
    sd = saved.state_dict()
    other_config = type(saved.config)()
    opt = type(saved)(_model(loss, dtype), loss, alpha_w=0.5, config=other_config)
    for bad in ({**sd, "loss": "cross_entropy"}, {**sd, "method": "Other"}, 42,
                {"model": {}, "optimizer": sd}):
        with pytest.raises((ValueError, TypeError)):
            opt.load_state_dict(bad)
        assert opt.config is other_config and opt.alpha_w == 0.5 and opt.work == 0
    opt.load_state_dict(sd)
    assert opt.config == saved.config and opt.config != other_config
    assert (opt.alpha_w, opt.alpha_theta) == (saved.alpha_w, 1e-4)
    assert opt.step(x, y) is not None


@pytest.mark.parametrize("kind", ["tn", "lanczos", "lbfgs", "joint"])
def test_weights_written_after_the_load_are_where_the_run_continues(kind):
    """The state's θ is used only while the model holds it; a model changed after the load
    starts there (as after any write into the model), with the saved counters."""
    loss, dtype = "least_squares", torch.float32
    (x, y), _ = _data(loss, dtype)
    opt = _method(kind, _model(loss, dtype), loss)
    opt.step(x, y)
    opt.step(x, y)
    sd = opt.state_dict()
    model = _model(loss, dtype, seed=5)  # never given the checkpoint's weights
    moved = _method(kind, model, loss)
    moved.load_state_dict(sd)
    moved.set_batch(x, y)
    fresh = _method(kind, _model(loss, dtype, seed=5), loss)
    fresh.set_batch(x, y)
    if kind != "joint":  # Φ_red at the model's θ (joint: W*(θ0) on a first batch, not here)
        assert moved.current().value == fresh.current().value
    assert moved.state.iteration == 2 and moved.work == sd["work"] + 2


def test_a_checkpoint_from_before_the_state_was_a_value_still_loads():
    """Old state dicts (no θ, W, g): radius, basis, pairs and counters at the model's weights."""
    loss, dtype = "least_squares", torch.float64
    (x, y), _ = _data(loss, dtype)
    model = _model(loss, dtype)
    opt = _method("tn", model, loss)
    for _ in range(3):
        opt.step(x, y)
    old_keys = ("method", "config", "loss", "alpha_w", "alpha_theta", "radius", "iteration",
                "work", "seconds", "inner_seconds", "pairs", "basis")
    sd = {k: v for k, v in opt.state_dict().items() if k in old_keys}
    again = _method("tn", _model(loss, dtype, seed=4), loss)
    again.model.load_state_dict(model.state_dict())
    again.load_state_dict(sd)
    again.set_batch(x, y)
    assert again.state.iteration == 3 and again.work == sd["work"]  # re-evaluation not counted
    assert len(again.state.pairs) == 3
    assert again.current().value == pytest.approx(opt.current().value, rel=1e-6)
    assert again.step(x, y).iteration == 4


@pytest.mark.parametrize(("change", "message"), [
    ({"theta": torch.zeros(5, dtype=torch.float64)}, r"state_dict\['theta'\] has 5 entries"),
    ({"W": torch.zeros(3, 3, dtype=torch.float64)}, r"state_dict\['W'\] must be a finite"),
    ({"g": torch.full((212,), float("nan"))}, r"state_dict\['g'\] must be a finite vector"),
    ({"value": float("inf")}, r"state_dict\['value'\] must be a finite"),
    ({"factor": torch.zeros(2, 2)}, r"state_dict\['factor'\] must be None or a 42 × 42"),
])
def test_a_state_of_another_model_is_refused_and_changes_nothing(change, message):
    loss, dtype = "least_squares", torch.float64
    (x, y), _ = _data(loss, dtype)
    opt = _method("tn", _model(loss, dtype), loss)
    opt.step(x, y)
    state, sd = opt.state, {**opt.state_dict(), **change}
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(sd)
    assert opt.state is state
