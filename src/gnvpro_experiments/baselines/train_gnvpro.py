"""GNvpro through the shared training interface, plus the helpers every baseline uses.

    records = train_gnvpro(model, data, settings)

Record 0 is the start θ0 with W*(θ0) (objective + gradient: 2 work units); then one record per
outer trust-region iteration (StepInfo.to_dict()). Work units as gnvpro.solver counts them:
objective + gradient 2, each H_GN v 2, each trial value 1, the gradient at an accepted point 1.

Budget convention shared by all methods: settings.max_work is spent *after* record 0, i.e. a run
stops at the first iteration whose cumulative work_units reach 2 + max_work (this is what
GNvpro.run(max_work=...) does, and what floor(max_work/2) epochs of ADAM/SGD give).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gnvpro.head import HeadSplit, split_model
from gnvpro.losses import Loss, make_loss
from gnvpro.metrics import prediction_metrics
from gnvpro.optim import GNvpro, GNvproConfig
from gnvpro.progress import bar
from gnvpro.varpro import Point, ReducedObjective, WarmStart

from ..problems.base import Split
from .base import TrainSettings

START_WORK = 2.0  # record 0: objective and gradient at θ0


# --------------------------------------------------------------------------- shared helpers
@dataclass
class Start:
    """The common starting point of every method: θ0 (the model's) and W*(θ0).

    objective: Φ_red on the training set; point: its evaluation at θ0 (value, S, W*, inner
    solve); seconds: wall time of that evaluation (the inner solve's share in point.inner).
    """

    split: HeadSplit
    loss: Loss
    objective: ReducedObjective
    point: Point
    seconds: float

    @property
    def theta0(self) -> Tensor:
        return self.point.theta

    @property
    def inner_seconds(self) -> float:
        return float(self.point.inner.seconds)


def make_start(model: nn.Module, data: Split, settings: TrainSettings) -> Start:
    """Locate the head, build Φ_red on (x_train, y_train) and write W*(θ0) into the model.

    The inner solve is warm-started from the model's current head (Newton losses).
    """
    split = split_model(model, settings.extra.get("head"), probe=data.x_train[:16])
    loss = make_loss(settings.loss)
    obj = ReducedObjective(
        split, loss, data.x_train, data.y_train, settings.alpha_w, settings.alpha_theta,
        B=settings.regularizer,
    )
    t0 = time.perf_counter()
    theta0 = flat_theta(split)
    pt = obj.evaluate(theta0, WarmStart(split.head_weights().to(torch.float64)))
    seconds = time.perf_counter() - t0
    if not torch.isfinite(torch.tensor(pt.value)):
        raise ValueError("the objective is not finite at the starting point")
    write_back(split, obj, pt.theta, pt.W)
    return Start(split, loss, obj, pt, seconds)


def flat_theta(split: HeadSplit) -> Tensor:
    """θ = the model's feature weights as one flat float64 vector."""
    return torch.cat([p.detach().reshape(-1).to(torch.float64)
                      for p in split.feature_params().values()])


@torch.no_grad()
def write_back(split: HeadSplit, obj: ReducedObjective, theta: Tensor, W: Tensor) -> None:
    """Copy θ (flat) and W = [W̃, b] into the model's parameters."""
    named = obj.features.layout.unflatten(theta.detach())
    for name, p in split.feature_params().items():
        p.copy_(named[name].to(p))
    split.set_head_weights(W.detach())


def has_val(data: Split) -> bool:
    return data.x_val is not None and len(data.x_val) > 0


@torch.no_grad()
def val_metrics(model: nn.Module, loss: Loss, split: HeadSplit, data: Split) -> dict | None:
    """prediction_metrics of the model on the validation set (None without one)."""
    if not has_val(data):
        return None
    return prediction_metrics(loss, model(data.x_val), data.y_val, split.n_outputs)


def metrics_of(
    S_train: Tensor, model: nn.Module, loss: Loss, split: HeadSplit, data: Split
) -> dict:
    """{"train": metrics of the training predictions S_train, "val": metrics of model(x_val)}."""
    out = {"train": prediction_metrics(loss, S_train, data.y_train, split.n_outputs)}
    val = val_metrics(model, loss, split, data)
    if val is not None:
        out["val"] = val
    return out


def make_record(
    method: str,
    iteration: int,
    loss: float,
    data_loss: float,
    work_units: float,
    seconds: float,
    inner_seconds: float,
    metrics: dict,
    **extra: object,
) -> dict:
    """One record in the format of gnvpro_experiments.baselines.base."""
    rec = {
        "method": method,
        "iteration": iteration,
        "loss": float(loss),
        "data_loss": float(data_loss),
        "work_units": float(work_units),
        "seconds": float(seconds),
        "inner_seconds": float(inner_seconds),
    }
    rec.update(extra)
    rec["metrics"] = metrics
    return rec


def start_record(method: str, start: Start, model: nn.Module, data: Split, **extra) -> dict:
    """Record 0: θ0 with W*(θ0), 2 work units (objective and gradient)."""
    pt = start.point
    return make_record(
        method, 0, pt.value, pt.loss, START_WORK, start.seconds, start.inner_seconds,
        metrics_of(pt.S, model, start.loss, start.split, data), **extra,
    )


@contextmanager
def progress_bar(enabled: bool, total: float, unit: str = "WU") -> Iterator[object | None]:
    """A tqdm bar over work units, or another unit (None when disabled or not on a terminal)."""
    b = bar(enabled, total, unit, leave=False)
    try:
        yield b
    finally:
        if b is not None:
            b.close()


def advance(bar: object | None, rec: dict) -> None:
    """Move a progress bar to rec's work units (past record 0)."""
    if bar is not None:
        bar.update(rec["work_units"] - START_WORK - bar.n)  # type: ignore[attr-defined]
        bar.set_postfix(loss=f"{rec['loss']:.4g}")  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------- GNvpro
def make_gnvpro(model: nn.Module, settings: TrainSettings, **defaults: object) -> GNvpro:
    """GNvpro with the settings' method options (extra may set inner_max_iter, radius_rule,
    head; `defaults` are used where extra is silent)."""
    extra = {**defaults, **settings.extra}
    config = GNvproConfig(
        max_krylov=settings.max_krylov, krylov_rtol=settings.krylov_rtol,
        subproblem=settings.subproblem, jvp_mode=settings.jvp_mode,
        tn_memory=settings.tn_memory, extrapolate=settings.extrapolate,
        jacobian=settings.jacobian, inner_rtol=settings.inner_rtol,
        inner_atol=settings.inner_atol, min_radius=settings.min_radius,
        **{k: extra[k] for k in ("radius_rule", "inner_max_iter") if k in extra},
    )
    return GNvpro(model, settings.loss, settings.alpha_w, settings.alpha_theta,
                  head=extra.get("head"), config=config, regularizer=settings.regularizer)


def train_gnvpro(model: nn.Module, data: Split, settings: TrainSettings) -> list[dict]:
    """GNvpro (trust-region Gauss-Newton on Φ_red(θ), W = W*(θ) always; method.md §2-3).

    The model ends with the last accepted θ and W*(θ).
    """
    opt = make_gnvpro(model, settings)
    x, y = data.x_train, data.y_train
    opt.run(x, y, max_iter=0)  # evaluates θ0, W*(θ0) and the gradient; writes W* into the model
    state, obj = opt.state, opt.objective
    assert state is not None and obj is not None
    pt = state.pt
    records = [make_record(
        "gnvpro", 0, pt.value, pt.loss, state.work, state.seconds, state.inner_seconds,
        metrics_of(pt.S, model, opt.loss, opt.split, data), grad_norm=state.grad_norm,
    )]
    val = (data.x_val, data.y_val) if has_val(data) else None
    hist = opt.run(x, y, max_work=settings.max_work, max_iter=settings.max_iter, val=val,
                   max_seconds=settings.max_seconds, progress=settings.progress)
    for info in hist.records:
        rec = info.to_dict()
        metrics = rec.pop("metrics")
        records.append({"method": "gnvpro", **rec, "metrics": metrics})
    records[-1]["termination"] = hist.termination.value
    return records
