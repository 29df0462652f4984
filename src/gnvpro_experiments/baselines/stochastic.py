"""ADAM and SGD (Nesterov momentum) on (θ, W) jointly, W starting at W*(θ0) (method.md §5).

Each step minimises the mini-batch objective

    Φ_B(θ, W) = L(Ẑ_B(θ) Wᵀ, C_B) + (α_W/2)‖W‖² + (α_θ/2)‖Bθ‖²

over shuffled mini-batches of settings.batch_size (torch.Generator seeded with settings.seed; the
last batch may be smaller). Work units: 2 per epoch (a forward and a backward pass over the
training set), record 0 counts 2, and floor(max_work/2) epochs run (fewer with max_iter), so the
last record has work_units = 2 + 2·floor(max_work/2) ≤ 2 + max_work. After every epoch the full
training objective and metrics and the validation metrics are recorded (not counted in work
units or seconds). With settings.keep_best_val the best-validation iterate (lowest validation
loss for regression, highest accuracy for classification, record 0 included; ties keep the
earlier one) is restored into the model at the end, and its records carry best_val=True.

ADAM is torch.optim.Adam with the standard bias correction 1 − β^t, t = the step (mini-batch)
count; the reference code used the epoch number for t, which we do not copy.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from gnvpro.regularizer import Regularizer

from ..problems.base import Split
from .base import TrainSettings
from .train_gnvpro import (
    START_WORK,
    advance,
    has_val,
    make_record,
    make_start,
    metrics_of,
    progress_bar,
)

__all__ = ["train_adam", "train_sgd", "train_stochastic"]

WORK_PER_EPOCH = 2.0

OptimizerFactory = Callable[[Iterable[Tensor]], torch.optim.Optimizer]


def _score(metrics: dict, classification: bool) -> float:
    """Larger is better: validation accuracy, or minus the validation loss."""
    val = metrics["val"]
    return float(val["accuracy"]) if classification else -float(val["loss"])


def train_stochastic(
    model: nn.Module,
    data: Split,
    settings: TrainSettings,
    make_optimizer: OptimizerFactory,
    method: str,
) -> list[dict]:
    """Mini-batch training of (θ, W) with the optimiser make_optimizer(params) builds."""
    if settings.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {settings.batch_size}")
    if settings.keep_best_val and not has_val(data):
        raise ValueError("keep_best_val needs validation data (data.x_val is empty)")
    t0 = time.perf_counter()
    start = make_start(model, data, settings)  # writes W*(θ0) into the model
    split, loss = start.split, start.loss
    feats = split.feature_params()
    head = [split.head.weight] + ([split.head.bias] if split.has_bias else [])
    reg = Regularizer(settings.alpha_theta, start.objective.features.layout,
                      settings.regularizer)
    alpha_w = settings.alpha_w
    dtype = split.head.weight.dtype
    x = data.x_train
    C = loss.prepare_targets(data.y_train, split.n_outputs).to(device=x.device, dtype=dtype)
    n = len(x)

    def objective(S: Tensor, Cb: Tensor) -> Tensor:
        """L(S, C_B) + (α_W/2)‖W‖² + (α_θ/2)‖Bθ‖² (differentiable in the model's weights)."""
        theta = torch.cat([p.reshape(-1) for p in feats.values()])
        w2 = sum(p.square().sum() for p in head)
        return loss.value(S, Cb) + 0.5 * alpha_w * w2 + reg.value(theta)

    opt = make_optimizer([*feats.values(), *head])
    gen = torch.Generator().manual_seed(settings.seed)
    epochs = int(math.floor(settings.max_work / WORK_PER_EPOCH))
    termination = "work budget spent"
    if settings.max_iter is not None and settings.max_iter < epochs:
        epochs, termination = settings.max_iter, "iteration limit reached"

    rec0 = make_record(
        method, 0, start.point.value, start.point.loss, START_WORK, time.perf_counter() - t0,
        start.inner_seconds, metrics_of(start.point.S, model, loss, split, data), epoch=0,
    )
    records = [rec0]
    best_score, best_state = -math.inf, None
    if settings.keep_best_val:
        best_score, best_state = _score(rec0["metrics"], loss.classification), _snapshot(model)
        rec0["best_val"] = True
    seconds = rec0["seconds"]
    with progress_bar(settings.progress, settings.max_work) as bar:
        for epoch in range(1, epochs + 1):
            te = time.perf_counter()
            perm = torch.randperm(n, generator=gen).to(x.device)
            for i in range(0, n, settings.batch_size):
                idx = perm[i : i + settings.batch_size]
                opt.zero_grad(set_to_none=True)
                objective(model(x[idx]), C[idx]).backward()
                opt.step()
            seconds += time.perf_counter() - te
            with torch.no_grad():
                S = model(x)
                phi = objective(S, C)
                L = loss.value(S, C)
            rec = make_record(
                method, epoch, float(phi), float(L), START_WORK + WORK_PER_EPOCH * epoch,
                seconds, start.inner_seconds, metrics_of(S, model, loss, split, data),
                epoch=epoch,
            )
            records.append(rec)
            advance(bar, rec)
            if settings.keep_best_val:
                score = _score(rec["metrics"], loss.classification)
                rec["best_val"] = score > best_score
                if score > best_score:
                    best_score, best_state = score, _snapshot(model)
            if not math.isfinite(float(phi)):
                termination = "diverged (non-finite objective)"
                break
            if settings.out_of_time(rec):
                termination = "time budget spent"
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    records[-1]["termination"] = termination
    return records


def _snapshot(model: nn.Module) -> dict:
    return copy.deepcopy(model.state_dict())


def train_adam(model: nn.Module, data: Split, settings: TrainSettings) -> list[dict]:
    """"adam": torch.optim.Adam(lr=settings.lr), standard (per-step) bias correction."""

    def make(params: Iterable[Tensor]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=settings.lr)

    return train_stochastic(model, data, settings, make, "adam")


def train_sgd(model: nn.Module, data: Split, settings: TrainSettings) -> list[dict]:
    """"sgd": torch.optim.SGD(lr, momentum=settings.momentum (0.9), Nesterov)."""
    nesterov = settings.nesterov and settings.momentum > 0

    def make(params: Iterable[Tensor]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum,
                               nesterov=nesterov)

    return train_stochastic(model, data, settings, make, "sgd")
