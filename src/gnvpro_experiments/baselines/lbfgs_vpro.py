"""L-BFGS-VarPro: L-BFGS on the reduced objective Φ_red(θ) = Φ(θ, W*(θ)) (method.md §5).

    d_k = −H_k ∇Φ_red(θ_k)     (two-loop recursion, memory settings.lbfgs_memory,
                                 H_k⁰ = γ_k I, γ_k = s_{k−1}ᵀy_{k−1} / y_{k−1}ᵀy_{k−1})
    θ_{k+1} = θ_k + α_k d_k,    α_k: strong Wolfe, c1 = 1e-4, c2 = 0.9
    φ(α) ≤ φ(0) + c1 α φ'(0),   |φ'(α)| ≤ c2 |φ'(0)|,    φ(α) = Φ_red(θ_k + α d_k)

The line search is Nocedal & Wright Alg. 3.5 (bracketing) + 3.6 (zoom) with safeguarded cubic
interpolation (quadratic where the derivative at the far end is unknown). The first trial step
is 1, except on the first iteration (or after a reset) where it is min(1, 1/‖g‖₁), as in
torch.optim.LBFGS. Every inner solve W*(θ) is warm-started from the current iterate's W.

Work units, counted as gnvpro.solver counts them: every line-search value Φ_red(θ + αd)
(forward pass + inner solve) 1, every gradient there (one backward pass) 1; the gradient is
only computed at trial points that satisfy the sufficient-decrease test, so an accepted point
costs 2 in all (the paper counts 1 per line-search evaluation + 2 at an accepted point). Record 0
(objective + gradient at θ0) is 2. The run stops at the first iteration reaching 2 + max_work.
"""

from __future__ import annotations

import math
import time
from collections import deque

import torch
from torch import Tensor, nn

from gnvpro.head import HeadSplit
from gnvpro.linalg.lbfgs import curvature_pair, two_loop
from gnvpro.linalg.line_search import LineSearchResult, strong_wolfe
from gnvpro.losses import Loss
from gnvpro.solver import wolfe_line_step
from gnvpro.varpro import InnerOptions, Point, ReducedObjective, WarmStart

from ..problems.base import Split
from .base import TrainSettings
from .train_gnvpro import (
    START_WORK,
    advance,
    flat_theta,
    make_record,
    make_start,
    metrics_of,
    progress_bar,
    write_back,
)

__all__ = ["LBFGSVarPro", "LineSearchResult", "strong_wolfe", "two_loop", "train_lbfgs_vpro"]


class LBFGSVarPro:
    """L-BFGS-VarPro iterations on one objective Φ_red at a time (a batch, or the training set).

    start(obj, pt) takes the gradient at pt (the 2 work units of an evaluation with gradient) and
    clears the curvature pairs; step() takes one iteration and returns its record fields, or
    None when no step can be taken (``stop_reason`` says why). The model follows the iterate.
    """

    def __init__(self, split: HeadSplit, loss: Loss, settings: TrainSettings,
                 inner: InnerOptions | None = None) -> None:
        self.split, self.loss_fn, self.settings, self.inner = split, loss, settings, inner
        self.max_line_search = int(settings.extra.get("max_line_search", 25))
        self.c1, self.c2 = 1e-4, 0.9
        self.pairs: deque[tuple[Tensor, Tensor, float]] = deque(maxlen=settings.lbfgs_memory)
        self.work = 0.0
        self.inner_seconds = 0.0
        self.obj: ReducedObjective | None = None
        self.pt: Point | None = None
        self.g: Tensor | None = None
        self.stop_reason = ""

    # ----------------------------------------------------------------------- the iterate
    @property
    def value(self) -> float:
        assert self.pt is not None
        return self.pt.value

    @property
    def data_loss(self) -> float:
        assert self.pt is not None
        return self.pt.loss

    @property
    def S(self) -> Tensor:
        assert self.pt is not None
        return self.pt.S

    @property
    def radius(self) -> None:
        return None

    @property
    def grad_norm(self) -> float:
        assert self.g is not None
        return float(self.g.norm())

    def start(self, obj: ReducedObjective, pt: Point) -> None:
        """Continue from pt on obj: gradient there (1 backward pass; 2 WU with the value)."""
        self.obj, self.pt = obj, pt
        self.g = obj.gradient(pt)
        self.work += START_WORK
        self.pairs.clear()
        write_back(self.split, obj, pt.theta, pt.W)

    def set_batch(self, x: Tensor, y: Tensor) -> None:
        """Φ_red on (x, y) at the current θ (W* warm-started from the current W)."""
        s = self.settings
        obj = ReducedObjective(self.split, self.loss_fn, x, y, s.alpha_w, s.alpha_theta,
                               B=s.regularizer, inner=self.inner)
        prev = self.pt if self.pt is not None else WarmStart(
            self.split.head_weights().to(torch.float64))
        pt = obj.evaluate(flat_theta(self.split), prev)
        self.inner_seconds += pt.inner.seconds
        if not math.isfinite(pt.value):
            raise ValueError("the objective is not finite at the current weights on this batch")
        self.start(obj, pt)

    def step(self) -> dict | None:
        """d = −H∇Φ_red (two-loop), strong Wolfe line search along d, update the pairs."""
        obj, pt, g = self.obj, self.pt, self.g
        assert obj is not None and pt is not None and g is not None
        if not float(g.norm()) > 0:
            self.stop_reason = "gradient is zero"
            return None
        d = -two_loop(g, self.pairs)
        dg = float(g @ d)
        if not dg < 0:  # lost positive definiteness numerically: restart from −g
            self.pairs.clear()
            d, dg = -g, -float(g @ g)
        alpha1 = 1.0 if self.pairs else min(1.0, 1.0 / float(g.abs().sum()))
        step = wolfe_line_step(obj, pt, d, dg, alpha1, self.max_line_search, self.c1, self.c2)
        self.work += step.work
        self.inner_seconds += step.inner_seconds
        ls, new, g_new = step.search, step.point, step.gradient
        if new is None:
            self.stop_reason = f"line search failed ({ls.message})"
            return None
        s, y = new.theta - pt.theta, g_new - g
        pair = curvature_pair(s, y)
        if pair is not None:
            self.pairs.append(pair)
        self.pt, self.g = new, g_new
        write_back(self.split, obj, new.theta, new.W)
        return {
            "loss": new.value, "data_loss": new.loss, "grad_norm": float(g_new.norm()),
            "step_length": float(ls.alpha), "step_norm": float(s.norm()),
            "line_search_evals": ls.evals, "wolfe": ls.wolfe, "line_search": ls.message,
            "inner_iterations": new.inner.iterations, "inner_converged": new.inner.converged,
        }


def train_lbfgs_vpro(model: nn.Module, data: Split, settings: TrainSettings) -> list[dict]:
    """L-BFGS with a strong Wolfe line search on Φ_red; the model ends at the last iterate."""
    method = "lbfgs-vpro"
    t0 = time.perf_counter()
    start = make_start(model, data, settings)
    lb = LBFGSVarPro(start.split, start.loss, settings)
    lb.inner_seconds = start.inner_seconds
    lb.start(start.objective, start.point)
    records = [make_record(
        method, 0, lb.value, lb.data_loss, lb.work, time.perf_counter() - t0, lb.inner_seconds,
        metrics_of(lb.S, model, start.loss, start.split, data), grad_norm=lb.grad_norm,
    )]
    t_metrics = 0.0
    max_work = START_WORK + settings.max_work
    k, termination = 0, "work budget spent"
    with progress_bar(settings.progress, settings.max_work) as bar:
        while lb.work < max_work:
            if settings.max_iter is not None and k >= settings.max_iter:
                termination = "iteration limit reached"
                break
            fields = lb.step()
            if fields is None:
                termination = lb.stop_reason
                break
            k += 1
            seconds = time.perf_counter() - t0 - t_metrics
            tm = time.perf_counter()
            metrics = metrics_of(lb.S, model, start.loss, start.split, data)
            t_metrics += time.perf_counter() - tm
            loss, data_loss = fields.pop("loss"), fields.pop("data_loss")
            rec = make_record(method, k, loss, data_loss, lb.work, seconds, lb.inner_seconds,
                              metrics, **fields)
            records.append(rec)
            advance(bar, rec)
            if settings.out_of_time(rec):
                termination = "time budget spent"
                break
    records[-1]["termination"] = termination
    return records
