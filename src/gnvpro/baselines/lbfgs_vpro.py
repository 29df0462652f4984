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
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..head import HeadSplit
from ..losses import Loss
from ..problems.base import Split
from ..varpro import InnerOptions, Point, ReducedObjective, WarmStart
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


# ------------------------------------------------------------------------------ line search
@dataclass
class LineSearchResult:
    """alpha: the step (None when no point of sufficient decrease was found); wolfe: whether
    both strong Wolfe conditions hold there; evals: φ evaluations used."""

    alpha: float | None
    wolfe: bool
    evals: int
    message: str


def _cubic_min(a: float, fa: float, da: float, b: float, fb: float, db: float) -> float | None:
    """Minimiser of the cubic interpolating φ, φ' at a and b (N&W eq. 3.59), None if none."""
    if a == b:
        return None
    d1 = da + db - 3.0 * (fa - fb) / (a - b)
    rad = d1 * d1 - da * db
    if not math.isfinite(rad) or rad < 0:
        return None
    d2 = math.copysign(math.sqrt(rad), b - a)
    denom = db - da + 2.0 * d2
    if denom == 0:
        return None
    out = b - (b - a) * (db + d2 - d1) / denom
    return out if math.isfinite(out) else None


def _quad_min(a: float, fa: float, da: float, b: float, fb: float) -> float | None:
    """Minimiser of the quadratic with φ(a), φ'(a), φ(b), None if it is not convex."""
    h = b - a
    curv = fb - fa - da * h
    if not math.isfinite(curv) or curv <= 0 or h == 0:
        return None
    return a - da * h * h / (2.0 * curv)


def strong_wolfe(
    phi: Callable[[float], float],
    dphi: Callable[[float], float],
    f0: float,
    df0: float,
    alpha1: float = 1.0,
    c1: float = 1e-4,
    c2: float = 0.9,
    max_evals: int = 25,
    alpha_max: float = 1e10,
) -> LineSearchResult:
    """Find α with φ(α) ≤ f0 + c1 α df0 and |φ'(α)| ≤ −c2 df0 (df0 < 0).

    phi(α) evaluates φ; dphi(α) returns φ'(α) and is only called right after phi(α) at the same α,
    and only where the sufficient-decrease test holds. When the evaluation budget runs out, the
    best sufficient-decrease point seen (with its derivative known) is returned, wolfe=False.
    """
    if not df0 < 0:
        raise ValueError(f"not a descent direction: φ'(0) = {df0}")
    evals = 0
    lo, flo, dlo = 0.0, f0, df0  # always a point of sufficient decrease with φ' known
    a_prev, f_prev, d_prev = 0.0, f0, df0
    a = min(alpha1, alpha_max)

    def armijo(alpha: float, f: float) -> bool:
        return math.isfinite(f) and f <= f0 + c1 * alpha * df0

    def curvature(d: float) -> bool:
        return abs(d) <= -c2 * df0

    def best(message: str) -> LineSearchResult:
        return LineSearchResult(lo if lo > 0 else None, False, evals, message)

    hi: float | None = None
    fhi = dhi = math.nan
    # Alg. 3.5: bracket
    while evals < max_evals:
        f = phi(a)
        evals += 1
        if not armijo(a, f) or (evals > 1 and f >= f_prev):
            hi, fhi, dhi = a, f, math.nan
            break
        d = dphi(a)
        if curvature(d):
            return LineSearchResult(a, True, evals, "strong Wolfe")
        lo, flo, dlo = a, f, d
        if d >= 0:  # minimiser bracketed between a and a_prev
            hi, fhi, dhi = a_prev, f_prev, d_prev
            break
        if a >= alpha_max:
            return best("reached alpha_max")
        cand = _cubic_min(a_prev, f_prev, d_prev, a, f, d)
        lower, upper = 1.1 * a, 10.0 * a  # extrapolate: α_{i+1} ∈ [1.1 α_i, 10 α_i]
        a_prev, f_prev, d_prev = a, f, d
        a = min(max(cand if cand is not None else 2.0 * a, lower), upper, alpha_max)
    if hi is None:
        return best("evaluation budget spent while bracketing")
    # Alg. 3.6: zoom between lo (sufficient decrease, φ' known) and hi
    while evals < max_evals:
        left, right = min(lo, hi), max(lo, hi)
        width = right - left
        if width <= 1e-16 * max(1.0, right):
            return best("bracket collapsed")
        cand = None
        if math.isfinite(fhi):
            if math.isfinite(dhi):
                cand = _cubic_min(lo, flo, dlo, hi, fhi, dhi)
            else:
                cand = _quad_min(lo, flo, dlo, hi, fhi)
        if cand is None or not left + 0.1 * width <= cand <= right - 0.1 * width:
            cand = 0.5 * (left + right)
        a = cand
        f = phi(a)
        evals += 1
        if not armijo(a, f) or f >= flo:
            hi, fhi, dhi = a, f, math.nan
            continue
        d = dphi(a)
        if curvature(d):
            return LineSearchResult(a, True, evals, "strong Wolfe")
        if d * (hi - lo) >= 0:
            hi, fhi, dhi = lo, flo, dlo
        lo, flo, dlo = a, f, d
    return best("evaluation budget spent while zooming")


# ----------------------------------------------------------------------------------- L-BFGS
def two_loop(g: Tensor, pairs: deque[tuple[Tensor, Tensor, float]]) -> Tensor:
    """H g by the two-loop recursion over pairs (s_i, y_i, 1/(s_iᵀy_i)), oldest first,
    with H⁰ = (sᵀy / yᵀy) I of the newest pair (I without pairs)."""
    q = g.clone()
    alphas = []
    for s, y, rho in reversed(pairs):
        a = rho * float(s @ q)
        q -= a * y
        alphas.append(a)
    if pairs:
        s, y, _ = pairs[-1]
        q *= float(s @ y) / float(y @ y)
    for (s, y, rho), a in zip(pairs, reversed(alphas), strict=True):
        b = rho * float(y @ q)
        q += (a - b) * s
    return q


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
        trials: dict[float, list] = {}

        def phi(a: float) -> float:
            trial = obj.evaluate(pt.theta + a * d, pt)
            self.work += 1
            self.inner_seconds += trial.inner.seconds
            trials[a] = [trial, None]
            return trial.value

        def dphi(a: float) -> float:
            entry = trials[a]
            entry[1] = obj.gradient(entry[0])
            self.work += 1
            return float(entry[1] @ d)

        ls = strong_wolfe(phi, dphi, pt.value, dg, alpha1, self.c1, self.c2,
                          self.max_line_search)
        if ls.alpha is None:
            self.stop_reason = f"line search failed ({ls.message})"
            return None
        new, g_new = trials[ls.alpha]
        s, y = new.theta - pt.theta, g_new - g
        sy = float(s @ y)
        if sy > 1e-12 * float(s.norm()) * float(y.norm()):
            self.pairs.append((s, y, 1.0 / sy))
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
    records[-1]["termination"] = termination
    return records
