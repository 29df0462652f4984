"""The paper's stochastic scheme (experiments.md §5): a deterministic method on fixed sub-batches.

The training set is split once (seeded with settings.seed) into ``n_batches`` fixed sub-batches.
For every epoch and every sub-batch, ``iters_per_batch`` iterations of the method are taken on
that sub-batch; what the method carries from one sub-batch to the next is its own business:

    "gnvpro-stochastic"      GNvpro (trust region on Φ_red); the radius is carried over
    "gn-stochastic"          trust-region GN on (θ, W); the radius is carried over
    "lbfgs-vpro-stochastic"  L-BFGS-VarPro; the curvature pairs are dropped at every new
                             sub-batch (pairs of another batch's Φ_red are not secant pairs of
                             this one), W* is warm-started from the last iterate

Every iteration that starts a sub-batch first re-evaluates the objective and its gradient at the
current weights on the new sub-batch (2 work units of the method's counting).

settings.extra keys (defaults: the paper's CIFAR-10 settings): ``epochs`` (2), ``n_batches`` (4),
``iters_per_batch`` (3; 30 for L-BFGS-VarPro), ``inner_max_iter`` (400, inner Newton iterations),
``max_line_search`` (30, L-BFGS-VarPro), ``head``. settings.max_iter, if given, caps the number of
iterations.

Work units stay "passes over the training set": the work of every iteration (as the method counts
it on its sub-batch, the re-evaluation on a new batch included) is scaled by len(batch) / n_train.
Record 0 is the start on the first batch (2 WU scaled the same way). Every record carries the
metrics of the current sub-batch as ``metrics["train"]`` (from the predictions at hand) and the
validation metrics, plus ``epoch``, ``batch`` and ``batch_size``; the trust-region methods add
``radius`` (after the step) and ``radius_in`` (the radius the step started from). A sub-batch on
which the method cannot progress (L-BFGS: the line search failed) is left for the next one; the
last record lists those as ``batch_stops``.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Protocol

import torch
from torch import Tensor, nn

from gnvpro.head import HeadSplit, split_model
from gnvpro.losses import Loss, make_loss
from gnvpro.metrics import prediction_metrics
from gnvpro.solver import SolverConfig, SolverState, initial_state, trust_region_step
from gnvpro.varpro import InnerOptions, ReducedObjective, WarmStart

from ..problems.base import Split
from .base import TrainSettings
from .joint_gn import JointProblem
from .lbfgs_vpro import LBFGSVarPro
from .train_gnvpro import (
    flat_theta,
    make_gnvpro,
    make_record,
    progress_bar,
    val_metrics,
    write_back,
)

__all__ = ["BatchMethod", "fixed_batches", "train_on_sub_batches", "train_gn_stochastic",
           "train_gnvpro_stochastic", "train_lbfgs_vpro_stochastic"]


class BatchMethod(Protocol):
    """A deterministic method that can move to a new batch at its current weights.

    set_batch evaluates at the current weights on (x, y); step takes one iteration there and
    returns its record fields (at least loss and data_loss), or None when it cannot progress on
    this batch. work / inner_seconds are cumulative in the method's own counting (unscaled);
    value, data_loss, S (predictions on the batch) and radius (None without one) describe the
    current iterate; split / loss_fn are the model's head split and the loss.
    """

    split: HeadSplit
    loss_fn: Loss
    work: float
    inner_seconds: float

    def set_batch(self, x: Tensor, y: Tensor) -> None: ...
    def step(self) -> dict | None: ...
    @property
    def value(self) -> float: ...
    @property
    def data_loss(self) -> float: ...
    @property
    def S(self) -> Tensor: ...
    @property
    def radius(self) -> float | None: ...


# ------------------------------------------------------------------------------ the methods
class _TrustRegionIterate:
    """The BatchMethod view of a trust-region SolverState (work, value, S, radius)."""

    def _state(self) -> SolverState:
        raise NotImplementedError

    @property
    def work(self) -> float:
        return self._state().work

    @property
    def value(self) -> float:
        return self._state().pt.value

    @property
    def data_loss(self) -> float:
        return self._state().pt.loss

    @property
    def S(self) -> Tensor:
        return self._state().pt.S

    @property
    def radius(self) -> float | None:
        return self._state().radius


class GNvproOnBatches(_TrustRegionIterate):
    """GNvpro.step on the current batch; GNvpro.set_batch carries the radius over."""

    def __init__(self, model: nn.Module, settings: TrainSettings) -> None:
        self.opt = make_gnvpro(model, settings, inner_max_iter=400)
        self.split, self.loss_fn = self.opt.split, self.opt.loss
        self.batch: tuple[Tensor, Tensor] | None = None

    def _state(self) -> SolverState:
        assert self.opt.state is not None
        return self.opt.state

    @property
    def inner_seconds(self) -> float:
        return self._state().inner_seconds

    def set_batch(self, x: Tensor, y: Tensor) -> None:
        self.opt.set_batch(x, y)
        self.batch = (x, y)

    def step(self) -> dict:
        assert self.batch is not None
        rec = self.opt.step(*self.batch).to_dict()
        rec.pop("metrics")
        return rec


class JointGNOnBatches(_TrustRegionIterate):
    """Trust-region GN on (θ, W) per batch: a JointProblem per batch, the radius carried over.

    W starts at W*(θ0) on the first batch; later batches continue from the current (θ, W).
    """

    def __init__(self, model: nn.Module, settings: TrainSettings, probe: Tensor) -> None:
        self.settings = settings
        self.split = split_model(model, settings.extra.get("head"), probe=probe)
        self.loss_fn = make_loss(settings.loss)
        self.cfg = SolverConfig(max_krylov=settings.max_krylov,
                                krylov_rtol=settings.krylov_rtol, subproblem=settings.subproblem)
        self.inner = InnerOptions(max_iter=int(settings.extra.get("inner_max_iter", 400)))
        self.problem: JointProblem | None = None
        self.state: SolverState | None = None
        self.inner_seconds = 0.0

    def _state(self) -> SolverState:
        assert self.state is not None
        return self.state

    def set_batch(self, x: Tensor, y: Tensor) -> None:
        s = self.settings
        problem = JointProblem(self.split, self.loss_fn, x, y, s.alpha_w, s.alpha_theta,
                               B=s.regularizer, coupled=True, jvp_mode=s.jvp_mode)
        old = self.state
        if old is None:  # θ0 with W*(θ0) on this batch
            obj = ReducedObjective(self.split, self.loss_fn, x, y, s.alpha_w, s.alpha_theta,
                                   B=s.regularizer, inner=self.inner)
            pt = obj.evaluate(flat_theta(self.split),
                              WarmStart(self.split.head_weights().to(torch.float64)))
            self.inner_seconds += pt.inner.seconds
            z = problem.pack(pt.theta, pt.W)
        else:
            z = old.pt.theta
        fresh = initial_state(problem, z)
        if old is not None:
            fresh = replace(fresh, radius=old.radius, work=old.work + fresh.work,
                            iteration=old.iteration)
        self.problem, self.state = problem, fresh
        write_back(self.split, problem, *problem.unpack(z))

    def step(self) -> dict:
        assert self.problem is not None and self.state is not None
        self.state, info = trust_region_step(self.problem, self.state, self.cfg)
        write_back(self.split, self.problem, *self.problem.unpack(self.state.pt.theta))
        rec = info.to_dict()
        rec.pop("metrics")
        return rec


# -------------------------------------------------------------------------------- the driver
def fixed_batches(x: Tensor, y: Tensor, n_batches: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    """A seeded random partition of (x, y) into min(n_batches, len(x)) near-equal batches."""
    n_batches = min(n_batches, len(x))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(seed)))
    perm = perm.to(x.device)
    return [(x[idx], y[idx]) for idx in torch.tensor_split(perm, n_batches)]


_SOLVER_KEYS = ("iteration", "loss", "data_loss", "work_units", "seconds", "inner_seconds",
                "radius")


def train_on_sub_batches(
    name: str, model: nn.Module, data: Split, settings: TrainSettings, method: BatchMethod,
    default_iters: int,
) -> list[dict]:
    """Run ``method`` over fixed sub-batches (module docstring); the model holds the result."""
    extra = settings.extra
    epochs = int(extra.get("epochs", 2))
    n_batches = int(extra.get("n_batches", 4))
    iters = int(extra.get("iters_per_batch", default_iters))
    if epochs < 1 or n_batches < 1 or iters < 1:
        raise ValueError(f"epochs, n_batches and iters_per_batch must be >= 1, got {epochs}, "
                         f"{n_batches}, {iters}")
    n = len(data.x_train)
    batches = fixed_batches(data.x_train, data.y_train, n_batches, settings.seed)

    def metrics(yb: Tensor) -> dict:
        """The current sub-batch's metrics (predictions at hand) and the validation metrics."""
        out = {"train": prediction_metrics(method.loss_fn, method.S, yb, method.S.shape[1])}
        val = val_metrics(model, method.loss_fn, method.split, data)
        if val is not None:
            out["val"] = val
        return out

    t0 = time.perf_counter()
    xb, yb = batches[0]
    method.set_batch(xb, yb)
    work = method.work * len(xb) / n
    seconds = time.perf_counter() - t0
    records = [make_record(name, 0, method.value, method.data_loss, work, seconds,
                           method.inner_seconds, metrics(yb), epoch=0, batch=0,
                           radius=method.radius, batch_size=len(xb))]
    termination, it, current = "epochs done", 0, 0
    stops: list[dict] = []  # sub-batches left early (L-BFGS: line search failed)
    with progress_bar(settings.progress, epochs * n_batches * iters, unit="it") as bar:
        for epoch in range(1, epochs + 1):
            for b, (xb, yb) in enumerate(batches):
                for _ in range(iters):
                    if settings.max_iter is not None and it >= settings.max_iter:
                        termination = "iteration limit reached"
                        break
                    radius_in, work_in = method.radius, method.work
                    ts = time.perf_counter()
                    if b != current:
                        method.set_batch(xb, yb)
                        current = b
                    fields = method.step()
                    seconds += time.perf_counter() - ts
                    work += (method.work - work_in) * len(xb) / n
                    if fields is None:  # no progress possible on this batch: the next one
                        stops.append({"epoch": epoch, "batch": b,
                                      "reason": getattr(method, "stop_reason", "")})
                        break
                    it += 1
                    rec = make_record(
                        name, it, fields["loss"], fields["data_loss"], work, seconds,
                        method.inner_seconds, metrics(yb), epoch=epoch, batch=b,
                        radius=method.radius, radius_in=radius_in, batch_size=len(xb),
                        **{k: v for k, v in fields.items() if k not in _SOLVER_KEYS},
                    )
                    records.append(rec)
                    if bar is not None:
                        bar.update(1)  # type: ignore[attr-defined]
                        bar.set_postfix(loss=f"{rec['loss']:.4g}")  # type: ignore[attr-defined]
                    if not math.isfinite(rec["loss"]):
                        termination = "diverged (non-finite objective)"
                        break
                    if settings.out_of_time(rec):
                        termination = "time budget spent"
                        break
                if termination != "epochs done":
                    break
            if termination != "epochs done":
                break
    records[-1]["termination"] = termination
    if stops:
        records[-1]["batch_stops"] = stops
    return records


# -------------------------------------------------------------------------- the entry points
def train_gnvpro_stochastic(model: nn.Module, data: Split, settings: TrainSettings) -> list[dict]:
    """"gnvpro-stochastic": GNvpro on fixed sub-batches, radius carried over (3 its/batch)."""
    return train_on_sub_batches("gnvpro-stochastic", model, data, settings,
                                GNvproOnBatches(model, settings), default_iters=3)


def train_gn_stochastic(model: nn.Module, data: Split, settings: TrainSettings) -> list[dict]:
    """"gn-stochastic": trust-region GN on (θ, W) on fixed sub-batches (3 its/batch)."""
    method = JointGNOnBatches(model, settings, probe=data.x_train[:16])
    return train_on_sub_batches("gn-stochastic", model, data, settings, method, default_iters=3)


def train_lbfgs_vpro_stochastic(
    model: nn.Module, data: Split, settings: TrainSettings
) -> list[dict]:
    """"lbfgs-vpro-stochastic": L-BFGS-VarPro on fixed sub-batches (30 its/batch, ≤ 30 line-
    search evaluations, pairs dropped at each new batch)."""
    extra = {"max_line_search": 30, **settings.extra}
    settings = replace(settings, extra=extra)
    split = split_model(model, extra.get("head"), probe=data.x_train[:16])
    method = LBFGSVarPro(split, make_loss(settings.loss), settings,
                         inner=InnerOptions(max_iter=int(extra.get("inner_max_iter", 400))))
    return train_on_sub_batches("lbfgs-vpro-stochastic", model, data, settings, method,
                                default_iters=30)
