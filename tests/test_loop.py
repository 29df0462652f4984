"""The one training loop (gnvpro.fit) and the method protocol: every method, budgets,
schedules, callbacks, termination, torch habits, checkpoints, and registering a new method."""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pytest
import torch
from torch import nn

import gnvpro
from gnvpro import (
    FirstOrder,
    FirstOrderConfig,
    GNvpro,
    GNvproConfig,
    JointGaussNewton,
    LBFGSVarPro,
    Termination,
    fit,
    fixed_batches,
    load_checkpoint,
    save_checkpoint,
)
from gnvpro.methods.varpro_optimizer import VarProOptimizer
from gnvpro.solver import StepInfo, wolfe_line_step
from gnvpro.validate import validate_config

CLASSES = [GNvpro, LBFGSVarPro, JointGaussNewton, FirstOrder]


def _make(cls, model):
    return cls(model, alpha_w=1e-6, alpha_theta=1e-6)


@pytest.mark.parametrize("cls", CLASSES)
def test_every_method_follows_the_protocol_and_lowers_the_loss(cls, tiny_regression):
    model, x, y = tiny_regression
    opt = _make(cls, model)
    assert isinstance(opt, gnvpro.Method)
    hist = fit(opt, [(x, y)], max_work=40, val=(x[:5], y[:5]), record_start=True)
    recs = hist.records
    assert recs[0].iteration == 0 and recs[0].work_units == 2.0
    assert recs[-1].loss < 0.8 * recs[0].loss
    assert [r.iteration for r in recs] == list(range(len(recs)))
    assert all({"train", "val"} == set(r.metrics) for r in recs)
    work = [r.work_units for r in recs]
    assert all(b > a for a, b in zip(work, work[1:], strict=False))
    assert hist.termination is Termination.MAX_WORK and work[-2] < 42 <= work[-1] or (
        cls is FirstOrder and work[-1] == 42)
    with torch.no_grad():  # the model holds the last iterate
        S = model(x)
    assert float(0.5 / len(x) * (S - y).square().sum()) == pytest.approx(recs[-1].data_loss,
                                                                         rel=1e-9)


def test_run_is_fit_on_one_batch(tiny_regression):
    model, x, y = tiny_regression
    a, b = GNvpro(copy.deepcopy(model)), GNvpro(copy.deepcopy(model))
    ra = a.run(x, y, max_iter=5).records
    rb = fit(b, [(x, y)], max_iter=5).records
    assert [r.loss for r in ra] == [r.loss for r in rb]


def test_sub_batch_schedule_scales_work_and_carries_the_radius(tiny_regression):
    model, x, y = tiny_regression
    opt = GNvpro(model, alpha_w=1e-6, alpha_theta=1e-6, config=GNvproConfig.trust_region())
    batches = fixed_batches(x, y, 2, seed=0)
    hist = fit(opt, batches, epochs=2, steps_per_batch=3, record_start=True)
    recs = hist.records
    assert hist.termination is Termination.EPOCHS_DONE and len(recs) == 1 + 2 * 2 * 3
    assert recs[0].work_units == pytest.approx(2.0 * len(batches[0][0]) / len(x))
    assert [r.extra["batch"] for r in recs[1:]] == [0, 0, 0, 1, 1, 1] * 2
    assert [r.extra["epoch"] for r in recs[1:]] == [1] * 6 + [2] * 6
    assert recs[4].radius > 0  # the first step on batch 1 ran with the carried radius


def test_first_order_budget_never_overshoots(tiny_regression):
    model, x, y = tiny_regression
    hist = fit(FirstOrder(model), [(x, y)], max_work=7, record_start=True)
    assert [r.work_units for r in hist.records] == [2.0, 4.0, 6.0, 8.0]  # 3 epochs ≤ 2 + 7


def test_callbacks_see_every_record_and_may_stop(tiny_regression):
    model, x, y = tiny_regression
    seen = []
    hist = fit(GNvpro(model), [(x, y)], max_iter=10, record_start=True,
               callback=lambda r: seen.append(r.iteration) or r.iteration == 3)
    assert seen == [0, 1, 2, 3] and hist.termination is Termination.STOPPED


def test_divergence_stops_the_loop(tiny_regression):
    model, x, y = tiny_regression
    opt = FirstOrder(model, config=FirstOrderConfig(optimizer="sgd", lr=1e6, batch_size=4))
    hist = fit(opt, [(x, y)], max_iter=50)
    assert hist.termination is Termination.DIVERGED
    assert not math.isfinite(hist.final.loss)


def test_keep_best_restores_the_best_validation_model(tiny_regression):
    model, x, y = tiny_regression
    opt = FirstOrder(model, config=FirstOrderConfig(lr=0.3, batch_size=4))
    keep = gnvpro.KeepBest(model, classification=False)
    hist = fit(opt, [(x, y)], max_iter=15, val=(x[:8], y[:8]), callbacks=[keep],
               record_start=True)
    best = min(range(len(hist.records)), key=lambda i: hist.records[i].metrics["val"]["loss"])
    keep.restore()
    with torch.no_grad():
        S = model(x[:8])
    assert float(0.5 / 8 * (S - y[:8]).square().sum()) == pytest.approx(
        hist.records[best].metrics["val"]["loss"], rel=1e-10)
    assert hist.records[best].extra["best_val"]


@pytest.mark.parametrize("cls", CLASSES)
def test_torch_habits_get_a_message(cls, tiny_regression):
    model, x, y = tiny_regression
    opt = _make(cls, model)
    with pytest.raises(TypeError, match=r"does not take a closure.*opt\.step\(x, y\)"):
        opt.step(lambda: 0.0)
    with pytest.raises(TypeError, match=r"zero_grad\(\).*gnvpro\.fit"):
        opt.zero_grad()


def test_fit_refuses_bad_arguments(tiny_regression):
    model, x, y = tiny_regression
    opt = GNvpro(model)
    with pytest.raises(TypeError, match=r"pass \[\(x, y\)\] for full-batch training"):
        fit(opt, (x, y), max_iter=1)
    with pytest.raises(ValueError, match="batches is empty"):
        fit(opt, [], max_iter=1)
    with pytest.raises(ValueError, match="needs a budget"):
        fit(opt, [(x, y)])
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        fit(opt, [(x, y)], max_iter=1, epochs=0)


@pytest.mark.parametrize("cls", CLASSES)
def test_checkpoint_holds_model_and_optimiser_and_training_continues(cls, tiny_regression,
                                                                     tmp_path):
    model, x, y = tiny_regression
    opt = _make(cls, model)
    fit(opt, [(x, y)], max_iter=3)
    assert "model" not in opt.state_dict()  # optimiser state only, as torch.optim
    save_checkpoint(tmp_path / "ck.pt", model, opt, level=1)
    ref = copy.deepcopy(model)
    ref_opt_next = opt.step(x, y)  # the uninterrupted run's next step
    model2 = copy.deepcopy(ref)
    torch.nn.init.zeros_(model2[0].weight)
    opt2 = _make(cls, model2)
    assert load_checkpoint(tmp_path / "ck.pt", model2, opt2) == {"level": 1}
    opt2.set_batch(x, y)
    start = opt2.current().value
    info = opt2.step(x, y)
    assert info is not None and ref_opt_next is not None
    if cls is not JointGaussNewton:  # state restored: the uninterrupted run's next step
        for p, q in zip(model.parameters(), model2.parameters(), strict=True):
            assert torch.allclose(p, q, rtol=1e-9, atol=1e-12)
    else:  # a fresh trust region from the restored (θ, W): it does not go uphill
        assert opt2.current().value <= start + 1e-12


def test_checkpoint_of_another_model_changes_nothing(tiny_regression, tmp_path):
    model, x, y = tiny_regression
    opt = GNvpro(model)
    opt.run(x, y, max_iter=1)
    save_checkpoint(tmp_path / "ck.pt", model, opt)
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
                                torch.nn.Linear(4, 2)).double()
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match="does not fit this model"):
        load_checkpoint(tmp_path / "ck.pt", other, GNvpro(other))
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "bad.pt", model, opt)


def test_checkpoint_hook_of_the_loop(tiny_regression):
    model, x, y = tiny_regression
    calls = []
    fit(GNvpro(model), [(x, y)], max_iter=4, checkpoint=lambda h: calls.append(len(h.records)),
        checkpoint_every=0.0)
    assert calls == [1, 2, 3, 4]


# ------------------------------------------------- a new method: one class, one registry line
@dataclass(frozen=True)
class SteepestDescentConfig:
    max_line_search: int = 25
    grad_rtol: float = 1e-10
    grad_atol: float = 0.0

    def __post_init__(self) -> None:
        validate_config(self)

    def to_dict(self) -> dict:
        return asdict(self)


class SteepestDescentVarPro(VarProOptimizer):
    """Steepest descent on Φ_red with a strong Wolfe line search (a method written in a test)."""

    config_type = SteepestDescentConfig

    def _objective_options(self) -> dict:
        return {}  # no inner options: least squares

    def _outer_step(self, state):
        g = state.g
        step = wolfe_line_step(self.objective, state.pt, -g, -float(g @ g), 1e-2,
                               self.config.max_line_search)
        state = replace(state, work=state.work + step.work)
        if step.point is None:
            return replace(state, stalled=True), None
        state = replace(state, pt=step.point, g=step.gradient, iteration=state.iteration + 1)
        return state, StepInfo(iteration=state.iteration, loss=step.point.value,
                               data_loss=step.point.loss, grad_norm=state.grad_norm)


def test_a_new_method_is_one_class_and_one_registry_line(tiny_regression, tmp_path,
                                                         monkeypatch):
    model, x, y = tiny_regression
    hist = fit(SteepestDescentVarPro(model, alpha_w=1e-6), [(x, y)], max_iter=10,
               record_start=True)
    assert hist.records[-1].loss < hist.records[0].loss

    from gnvpro_experiments import load_config, run_experiment, train

    monkeypatch.setitem(train.METHODS, "steepest-descent",
                        train.MethodSpec(SteepestDescentVarPro, SteepestDescentConfig))
    toml = Path(load_config("ellipse").source).read_text().replace(
        'default_methods = ["gnvpro", "gn"]', 'default_methods = ["steepest-descent"]')
    toml += '\n[methods.steepest-descent]\nmax_iter = 5\nmax_line_search = 10\n'
    toml = toml.replace("n_per_class = 7000", "n_per_class = 300").replace(
        "n_train = 5000", "n_train = 300").replace("n_val = 1000", "n_val = 100")
    path = tmp_path / "toy.toml"
    path.write_text(toml)
    summary = run_experiment(load_config(path), tmp_path / "out", progress=False)
    row = summary["methods"]["steepest-descent"][0]
    assert row["test"] > 0.5 and row["work_units"] > 2


def test_predict_in_row_blocks_is_one_pass_and_validates_fit(monkeypatch) -> None:
    """gnvpro.metrics.predict: model(x) in blocks of rows, without a graph; fit's validation
    metrics go through it (the same metrics with blocks of 7 rows as in one pass)."""
    from gnvpro import metrics

    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    S = metrics.predict(model, x, rows=7)
    assert not S.requires_grad
    assert torch.allclose(S, model(x), rtol=0, atol=1e-14)

    def val_losses(rows: int) -> list[float]:
        monkeypatch.setattr(metrics, "PREDICT_ROWS", rows)
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).double()
        opt = gnvpro.GNvpro(m, loss="cross_entropy", alpha_w=1e-3)
        hist = gnvpro.fit(opt, [(x, y)], max_iter=3, val=(x, y))
        return [r.metrics["val"]["loss"] for r in hist.records]

    assert val_losses(7) == pytest.approx(val_losses(1024), rel=1e-12)


def test_first_order_objective_and_evaluate_predict_in_row_blocks(monkeypatch) -> None:
    """SGD's epoch-end objective (FirstOrder.current()) and GNvpro.evaluate run the model in
    blocks of PREDICT_ROWS rows (a CNN on 40000 CIFAR-10 images held ~10 GB in one pass), with
    the values of one pass."""
    from gnvpro import metrics

    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    rows_seen: list[int] = []
    model.register_forward_hook(lambda m, inp, out: rows_seen.append(len(inp[0])))
    sgd = gnvpro.FirstOrder(model, loss="cross_entropy", alpha_w=1e-3,
                            config=gnvpro.FirstOrderConfig(optimizer="sgd"))
    sgd.set_batch(x, y)
    one_pass = sgd.current()
    monkeypatch.setattr(metrics, "PREDICT_ROWS", 7)
    sgd._current = None  # forget the cached iterate: the same weights, predicted again
    rows_seen.clear()
    blocks = sgd.current()
    assert rows_seen == [7] * 5 + [5]
    assert blocks.value == pytest.approx(one_pass.value, rel=1e-13)
    assert torch.allclose(blocks.S, one_pass.S, rtol=0, atol=1e-14)
    opt = gnvpro.GNvpro(model, loss="cross_entropy", alpha_w=1e-3)
    rows_seen.clear()
    val = opt.evaluate(x, y)
    assert rows_seen == [7] * 5 + [5]
    assert val["loss"] == pytest.approx(metrics.prediction_metrics(
        opt.loss, model(x).detach(), y, 3)["loss"], rel=1e-13)
