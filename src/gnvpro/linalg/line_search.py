"""Strong Wolfe line search (Nocedal & Wright Alg. 3.5 bracketing + 3.6 zoom).

    φ(α) ≤ φ(0) + c1 α φ'(0),   |φ'(α)| ≤ c2 |φ'(0)|,   φ(α) = f(x + α d),  φ'(0) < 0,

with safeguarded cubic interpolation (quadratic where the derivative at the far end is unknown).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LineSearchResult", "strong_wolfe"]


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
