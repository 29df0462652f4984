"""Searches: how an outer iteration decides how far to go along a descent's step (reference:
trnewton, docs/method.md §3). Each is a frozen dataclass of its own settings whose
``step(problem, state, descent)`` is one outer iteration: it returns the new state and a StepInfo.

    TrustRegion   s from descent.trust_step (‖s‖ ≤ Δ), one trial evaluation, the ratio
                  ρ = (Φ(θ) − Φ(θ + s)) / pred and the radius rule (gnvpro.trust_region);
                  a rejected step keeps θ (and the descent's basis where it keeps one)
    StrongWolfe   d from descent.direction, θ ← θ + α d with α by a strong Wolfe line search
                  (Nocedal & Wright Alg. 3.5/3.6; c1 = 1e-4, c2 = 0.9), a new curvature pair
                  (s, Δg) for the descent's L-BFGS memory; a failed search drops the pairs (the
                  next direction is preconditioned by nothing), or stops when there were none

Work units: each H v 2 (the descent's), each trial value 1, each gradient 1 (at an accepted
trial point; in the line search only where Armijo holds).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from torch import Tensor

from .linalg.lbfgs import curvature_pair, newest
from .linalg.line_search import strong_wolfe
from .state import Problem, SolverState, StepInfo, inner_status
from .trust_region import RadiusRule, StepOutcome
from .validate import in_range, validate_config

__all__ = ["SEARCHES", "LineStep", "StrongWolfe", "TrustRegion", "wolfe_line_step"]


def _inner_fields(trial: Any) -> dict:
    """The StepInfo fields of a trial point's inner solve."""
    inner = getattr(trial, "inner", None)
    return {"inner_iterations": inner.iterations if inner else 0,
            "inner_grad_norm": inner.grad_norm if inner else 0.0,
            "inner_converged": inner.converged if inner else True}


def _inner_seconds(pt: Any) -> float:
    inner = getattr(pt, "inner", None)
    return inner.seconds if inner else 0.0


@dataclass(frozen=True)
class TrustRegion:
    """Trust region: one trial evaluation per iteration, accepted by the ratio test.

    Parameters
    ----------
    rule : RadiusRule
        Thresholds η and factors of the radius update (gnvpro.trust_region; the reference's).
    min_radius : float
        Stop (Termination.RADIUS) when the radius falls below it (default 1e-14).
    extrapolate : bool
        An ablation: after a very successful step also try 2s (+1 work unit), keep the better.

    Notes
    -----
    ρ = (Φ(θ) − Φ(θ + s)) / pred with s from the descent's ``trust_step``; ρ < η_reject keeps θ
    and shrinks Δ, otherwise θ ← θ + s and Δ follows the rule. Work: 1 for the trial value, 1
    for the gradient at an accepted point, 2 per product of the descent.

    References
    ----------
    A. Conn, N. Gould, Ph. Toint, Trust-Region Methods, SIAM (2000), Alg. 6.1.1.
    """

    kind: ClassVar[str] = "trust_region"
    rule: RadiusRule = field(default_factory=RadiusRule)
    min_radius: float = field(default=1e-14, metadata=in_range(low=0.0))
    extrapolate: bool = False

    def __post_init__(self) -> None:
        validate_config(self)

    def step(self, problem: Problem, state: SolverState, descent: Any
             ) -> tuple[SolverState, StepInfo]:
        t0 = time.perf_counter()
        ts = descent.trust_step(problem, state)
        state, s = ts.state, ts.s
        step_norm = float(s.norm())
        gn = state.grad_norm  # the inner tolerance follows it (InnerOptions.forcing)
        trial = problem.evaluate(state.pt.theta + s.to(state.pt.theta), state.pt,
                                 outer_grad_norm=gn)
        work = state.work + 1
        ared = state.pt.value - trial.value
        rho = ared / ts.pred if ts.pred > 0 and math.isfinite(trial.value) else float("nan")
        outcome, radius = self.rule.update(rho, state.radius, step_norm, ts.on_boundary,
                                           state.grad_norm)
        inner_seconds = state.inner_seconds + _inner_seconds(trial)
        status = inner_status(state, trial)  # of the trial at s (before any extrapolation)
        inner = _inner_fields(trial)
        if outcome is StepOutcome.REJECTED:
            new = replace(state, radius=radius, work=work,
                          basis=state.basis if descent.keeps_basis else None)
        else:
            if self.extrapolate and rho > self.rule.eta_expand:
                far = problem.evaluate(state.pt.theta + 2 * s.to(state.pt.theta), trial,
                                       outer_grad_norm=gn)
                work += 1
                inner_seconds += _inner_seconds(far)
                if far.value < trial.value:
                    trial, step_norm = far, 2 * step_norm
            new = replace(state, pt=trial, g=problem.gradient(trial), radius=radius,
                          basis=None, work=work + 1)
        new = replace(new, iteration=state.iteration + 1, inner_seconds=inner_seconds,
                      seconds=state.seconds + time.perf_counter() - t0)
        info = StepInfo(
            iteration=new.iteration, loss=new.pt.value, data_loss=new.pt.loss,
            grad_norm=new.grad_norm, radius=radius, rho=rho, outcome=outcome.value,
            accepted=outcome is not StepOutcome.REJECTED, step_norm=step_norm,
            krylov_iters=ts.products, krylov_relres=ts.relres, work_units=new.work,
            seconds=new.seconds, inner_seconds=inner_seconds, status=status, **inner,
        )
        return new, info


@dataclass
class LineStep:
    """A strong Wolfe line search along d: its result, the accepted point and gradient (None
    when it failed), and what it cost (work units: 1 per value, 1 per gradient; inner seconds)."""

    search: Any
    point: Any
    gradient: Tensor | None
    work: float
    inner_seconds: float


def wolfe_line_step(problem: Problem, pt: Any, d: Tensor, dg: float, alpha1: float = 1.0,
                    max_evals: int = 25, c1: float = 1e-4, c2: float = 0.9,
                    grad_norm: float | None = None) -> LineStep:
    """φ(α) = Φ(θ + α d) from pt (φ'(0) = dg < 0); gradients only where Armijo holds;
    grad_norm = ‖∇Φ‖ at pt, which the inner tolerance follows (InnerOptions.forcing)."""
    trials: dict[float, list] = {}
    cost = {"work": 0.0, "inner": 0.0}

    def phi(a: float) -> float:
        trial = problem.evaluate(pt.theta + a * d, pt, outer_grad_norm=grad_norm)
        cost["work"] += 1
        cost["inner"] += _inner_seconds(trial)
        trials[a] = [trial, None]
        return trial.value

    def dphi(a: float) -> float:
        entry = trials[a]
        entry[1] = problem.gradient(entry[0])
        cost["work"] += 1
        return float(entry[1] @ d)

    ls = strong_wolfe(phi, dphi, pt.value, dg, alpha1, c1, c2, max_evals)
    point, grad = trials[ls.alpha] if ls.alpha is not None else (None, None)
    return LineStep(ls, point, grad, cost["work"], cost["inner"])


_UNIT_OPEN = in_range(low=0.0, low_inclusive=False, high=1.0, high_inclusive=False)


@dataclass(frozen=True)
class StrongWolfe:
    """Strong Wolfe line search along the descent's direction.

    Parameters
    ----------
    c1, c2 : float
        0 < c1 < c2 < 1 (defaults 1e-4, 0.9): Φ(θ + αd) ≤ Φ(θ) + c1 α gᵀd and
        |∇Φ(θ + αd)ᵀd| ≤ c2 |gᵀd|.
    max_evals : int
        Values per search (default 25).

    Notes
    -----
    Bracketing and zoom with cubic interpolation from the descent's first trial step; each
    value costs 1 work unit, each gradient 1 (only where Armijo holds). An accepted step adds
    the pair (s, Δg) to the descent's L-BFGS memory; a failed search drops the pairs, and
    stops the method (Termination.LINE_SEARCH) when there were none.

    References
    ----------
    J. Nocedal, S. Wright, Numerical Optimization, 2nd ed. (2006), Alg. 3.5, 3.6.
    """

    kind: ClassVar[str] = "strong_wolfe"
    c1: float = field(default=1e-4, metadata=_UNIT_OPEN)
    c2: float = field(default=0.9, metadata=_UNIT_OPEN)
    max_evals: int = field(default=25, metadata=in_range(low=1))

    def __post_init__(self) -> None:
        validate_config(self)
        if not self.c1 < self.c2:
            raise ValueError(f"StrongWolfe: need c1 < c2, got c1={self.c1:g}, c2={self.c2:g}")

    def step(self, problem: Problem, state: SolverState, descent: Any
             ) -> tuple[SolverState, StepInfo]:
        t0 = time.perf_counter()
        pt, g = state.pt, state.g
        dr = descent.direction(problem, state)
        work = state.work + 2 * dr.products
        ls_step = wolfe_line_step(problem, pt, dr.d, dr.dg, dr.alpha1, self.max_evals,
                                  self.c1, self.c2, state.grad_norm)
        ls, trial, work = ls_step.search, ls_step.point, work + ls_step.work
        inner_seconds = state.inner_seconds + ls_step.inner_seconds
        if trial is None:  # no decrease: drop the curvature pairs; stop if there were none
            new = replace(state, work=work, pairs=(), stalled=not state.pairs, memo=dr.memo)
            alpha, step_norm, outcome = 0.0, 0.0, "rejected (line search failed)"
        else:
            s = trial.theta - pt.theta
            pairs = newest(dr.pairs, curvature_pair(s, ls_step.gradient - g), descent.memory)
            new = replace(state, pt=trial, g=ls_step.gradient, work=work, pairs=pairs,
                          stalled=False, memo=dr.memo)
            alpha, step_norm, outcome = float(ls.alpha), float(s.norm()), "accepted (line search)"
        new = replace(new, iteration=state.iteration + 1, inner_seconds=inner_seconds,
                      seconds=state.seconds + time.perf_counter() - t0)
        info = StepInfo(
            iteration=new.iteration, loss=new.pt.value, data_loss=new.pt.loss,
            grad_norm=new.grad_norm, outcome=outcome, accepted=trial is not None,
            step_norm=step_norm, krylov_iters=dr.products, krylov_relres=dr.relres,
            work_units=new.work, seconds=new.seconds, inner_seconds=inner_seconds,
            step_length=alpha, line_search_evals=ls.evals, status=inner_status(state, trial),
            extra={"wolfe": ls.wolfe, "line_search": ls.message,
                   **({"descent": dr.mode} if dr.mode else {})}, **_inner_fields(trial),
        )
        return new, info


SEARCHES = (TrustRegion, StrongWolfe)
