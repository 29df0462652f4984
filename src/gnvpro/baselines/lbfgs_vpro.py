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

from torch import Tensor, nn

from ..problems.base import Split
from .base import TrainSettings
from .train_gnvpro import (
    START_WORK,
    advance,
    make_record,
    make_start,
    metrics_of,
    progress_bar,
    write_back,
)

__all__ = ["LineSearchResult", "strong_wolfe", "two_loop", "train_lbfgs_vpro"]


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


class _Counter:
    def __init__(self) -> None:
        self.work = START_WORK
        self.inner_seconds = 0.0


def train_lbfgs_vpro(model: nn.Module, data: Split, settings: TrainSettings) -> list[dict]:
    """L-BFGS with a strong Wolfe line search on Φ_red; the model ends at the last iterate."""
    method = "lbfgs-vpro"
    c1, c2 = 1e-4, 0.9
    max_ls = int(settings.extra.get("max_line_search", 25))
    t0 = time.perf_counter()
    start = make_start(model, data, settings)
    split, obj = start.split, start.objective
    pt = start.point
    g = obj.gradient(pt)
    count = _Counter()
    count.inner_seconds = start.inner_seconds
    records = [make_record(
        method, 0, pt.value, pt.loss, count.work, time.perf_counter() - t0, count.inner_seconds,
        metrics_of(pt.S, model, start.loss, split, data), grad_norm=float(g.norm()),
    )]
    t_metrics = 0.0
    pairs: deque[tuple[Tensor, Tensor, float]] = deque(maxlen=settings.lbfgs_memory)
    max_work = START_WORK + settings.max_work
    k, termination = 0, "work budget spent"
    with progress_bar(settings.progress, settings.max_work) as bar:
        while True:
            if count.work >= max_work:
                break
            if settings.max_iter is not None and k >= settings.max_iter:
                termination = "iteration limit reached"
                break
            if not float(g.norm()) > 0:
                termination = "gradient is zero"
                break
            d = -two_loop(g, pairs)
            dg = float(g @ d)
            if not dg < 0:  # lost positive definiteness numerically: restart from −g
                pairs.clear()
                d, dg = -g, -float(g @ g)
            alpha1 = 1.0 if pairs else min(1.0, 1.0 / float(g.abs().sum()))
            trials: dict[float, list] = {}
            base = pt

            def phi(a: float, base=base, d=d, trials=trials) -> float:
                trial = obj.evaluate(base.theta + a * d, base)
                count.work += 1
                count.inner_seconds += trial.inner.seconds
                trials[a] = [trial, None]
                return trial.value

            def dphi(a: float, d=d, trials=trials) -> float:
                entry = trials[a]
                entry[1] = obj.gradient(entry[0])
                count.work += 1
                return float(entry[1] @ d)

            ls = strong_wolfe(phi, dphi, pt.value, dg, alpha1, c1, c2, max_ls)
            if ls.alpha is None:
                termination = f"line search failed ({ls.message})"
                break
            new, g_new = trials[ls.alpha]
            s, y = new.theta - pt.theta, g_new - g
            sy = float(s @ y)
            if sy > 1e-12 * float(s.norm()) * float(y.norm()):
                pairs.append((s, y, 1.0 / sy))
            pt, g = new, g_new
            k += 1
            write_back(split, obj, pt.theta, pt.W)
            seconds = time.perf_counter() - t0 - t_metrics
            tm = time.perf_counter()
            metrics = metrics_of(pt.S, model, start.loss, split, data)
            t_metrics += time.perf_counter() - tm
            rec = make_record(
                method, k, pt.value, pt.loss, count.work, seconds, count.inner_seconds, metrics,
                grad_norm=float(g.norm()), step_length=float(ls.alpha),
                step_norm=float(s.norm()), line_search_evals=ls.evals, wolfe=ls.wolfe,
                line_search=ls.message, inner_iterations=pt.inner.iterations,
                inner_converged=pt.inner.converged,
            )
            records.append(rec)
            advance(bar, rec)
    write_back(split, obj, pt.theta, pt.W)
    records[-1]["termination"] = termination
    return records
