"""Trust-region Gauss-Newton, one outer iteration at a time (reference: trnewton,
docs/method.md §3).

Each iteration builds a Krylov basis V of the Gauss-Newton operator H for the right-hand side −g
(Lanczos with full reorthogonalisation, ≤ max_krylov vectors, relative tolerance krylov_rtol),
solves  min_z −β₀ z₁ + ½ zᵀ T z,  ‖z‖ ≤ Δ  exactly inside it (T = V H Vᵀ), and tests s = Vᵀz by the
ratio ρ (gnvpro.trust_region). After a rejection the same basis is reused (no new products). The
first radius is the length of the first Gauss-Newton step. subproblem="steihaug" replaces the
basis by Steihaug-Toint truncated CG.

subproblem="tn" (truncated Gauss-Newton with a line search instead of a trust region):
    d ≈ −H⁻¹g by ≤ max_krylov preconditioned CG products (relative tolerance krylov_rtol), the
    preconditioner M⁻¹ the L-BFGS(tn_memory) inverse built from the accepted steps (s, y = Δg);
    θ ← θ + α d, α by a strong Wolfe line search (c1 = 1e-4, c2 = 0.9) starting at α = 1.
Each line-search value costs 1 work unit and each gradient there 1, as in L-BFGS-VarPro.

Work units (docs/method.md §4): initial objective + gradient 2, each H v 2, each trial value 1, the
gradient at an accepted point 1 (its forward pass is the trial's; the reference re-evaluates the
objective and gradient there, 2). The inner solve is not counted in work units; its seconds are
recorded separately.

The problem is any object with evaluate(θ, prev) -> point (with .value and .inner),
gradient(point) and gn_operator(point); so the joint (θ, W) Gauss-Newton baseline uses this too.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from typing import Any, Protocol

from torch import Tensor

from .linalg import (
    KrylovBasis,
    lanczos,
    newton_step_in_subspace,
    steihaug_cg,
    tr_step_in_subspace,
)
from .linalg.cg import pcg
from .linalg.lbfgs import curvature_pair, newest, two_loop
from .linalg.line_search import strong_wolfe
from .trust_region import RadiusRule, StepOutcome
from .validate import choices, in_range, validate_config


class Problem(Protocol):
    def evaluate(self, theta: Tensor, prev: Any = None) -> Any: ...
    def gradient(self, pt: Any) -> Tensor: ...
    def gn_operator(self, pt: Any) -> Any: ...


class Termination(str, Enum):
    RUNNING = "running"
    GRAD_RTOL = "‖g‖/‖g0‖ below rtol"
    GRAD_ATOL = "‖g‖ below atol"
    MAX_ITER = "iteration limit reached"
    MAX_WORK = "work budget spent"
    RADIUS = "trust region collapsed (no further progress possible)"
    LINE_SEARCH = "line search found no decrease along the Gauss-Newton direction"
    STOPPED = "stopped by callback"
    MAX_SECONDS = "time budget spent"
    DIVERGED = "diverged (non-finite objective)"
    EPOCHS_DONE = "epochs done"


SUBPROBLEMS = ("lanczos", "steihaug", "tn")


@dataclass(frozen=True)
class SolverConfig:
    """Settings of the outer solver (defaults: the paper's trust region, as the reference's
    surrogate runs); the method configs that run it extend this one."""

    max_krylov: int = field(default=20, metadata=in_range(low=1))
    krylov_rtol: float = field(default=1e-2, metadata=in_range(low=0.0, high=1.0,
                                                               high_inclusive=False))
    subproblem: str = field(default="lanczos", metadata=choices(*SUBPROBLEMS))
    radius_rule: RadiusRule = field(default_factory=RadiusRule)
    grad_rtol: float = field(default=1e-10, metadata=in_range(low=0.0))
    grad_atol: float = field(default=0.0, metadata=in_range(low=0.0))
    min_radius: float = field(default=1e-14, metadata=in_range(low=0.0))
    tn_memory: int = 10
    max_line_search: int = field(default=25, metadata=in_range(low=1))
    extrapolate: bool = False  # trust region: after a very successful step also try 2s (+1 WU)

    def __post_init__(self) -> None:
        validate_config(self)  # every field, by its type and range (TypeError / ValueError)


@dataclass
class SavedPoint:
    """A point as a state dict holds it: θ (the solver's float64 variable), W (float64; for
    the joint problem a view of θ), Φ there and the Cholesky factor of H_W at W (the next
    inner solve's preconditioner; None without a dense inner solve). It is a valid ``prev``
    of ``Problem.evaluate``: warm-started from the converged W, the inner solve at θ returns W
    bit for bit."""

    theta: Tensor
    W: Tensor
    value: float
    factor: Tensor | None = None

    @property
    def inner(self) -> Any:
        """What ``evaluate(θ, prev)`` reads of a previous point's inner solve."""
        f = self.factor
        return _SavedInner(None if f is None else lambda: f)


@dataclass
class _SavedInner:
    factor: Any = None
    converged: bool = True
    message: str = ""
    seconds: float = 0.0


@dataclass
class SolverState:
    """The outer solver's state. ``pt`` is the evaluated point at θ (on the current problem;
    a SavedPoint, or None for a pre-θ checkpoint, until the method re-evaluates it on data);
    the rest are values. ``to_dict()`` is the whole state as tensors and numbers (the methods'
    state_dict), ``from_dict`` its inverse (no evaluation)."""

    pt: Any
    g: Tensor
    grad_norm0: float
    radius: float | None = None
    basis: KrylovBasis | None = None
    work: float = 0.0
    iteration: int = 0
    inner_seconds: float = 0.0
    seconds: float = 0.0
    pairs: tuple = ()  # subproblem "tn": L-BFGS pairs (s, y, 1/sᵀy) of the accepted steps
    stalled: bool = False  # subproblem "tn": the last line search found no decrease

    @property
    def grad_norm(self) -> float:
        return float(self.g.norm())

    def to_dict(self) -> dict[str, Any]:
        """θ, W, value and factor of the point, g, grad_norm0, radius, basis (its fields),
        pairs ([s, y, ρ] lists), stalled and the counters. Tensors are the state's own (a
        step replaces them, never changes them in place); the point's lazy H_W factor is formed
        here if it was not yet (the next step would form it)."""
        pt = self.pt
        factor = getattr(getattr(pt, "inner", None), "factor", None)
        factor = factor() if callable(factor) else factor
        counters = {k: float(getattr(self, k)) for k in ("work", "seconds", "inner_seconds")}
        return {
            "theta": None if pt is None else pt.theta, "W": None if pt is None else pt.W,
            "value": None if pt is None else float(pt.value), "factor": factor, "g": self.g,
            "grad_norm0": self.grad_norm0, "radius": self.radius,
            "basis": None if self.basis is None else {  # its fields (asdict would copy V)
                f.name: getattr(self.basis, f.name) for f in fields(self.basis)},
            "pairs": [[s, y, float(r)] for s, y, r in self.pairs], "stalled": self.stalled,
            "iteration": self.iteration, **counters,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SolverState:
        """The state of ``to_dict()``'s dict (checked by the caller), its point a SavedPoint."""
        pt = None if d.get("theta") is None else SavedPoint(d["theta"], d["W"], d["value"],
                                                            d.get("factor"))
        basis = None if d.get("basis") is None else KrylovBasis(**d["basis"])
        return cls(pt, d.get("g"), d.get("grad_norm0", math.nan), d["radius"], basis,
                   d["work"], d["iteration"], d["inner_seconds"], d["seconds"],
                   tuple((s, y, float(r)) for s, y, r in d["pairs"]), bool(d.get("stalled")))


@dataclass
class StepInfo:
    """What one outer iteration did (printing, JSONL and plots consume these)."""

    iteration: int
    loss: float
    data_loss: float
    grad_norm: float
    radius: float = math.nan
    rho: float = math.nan
    outcome: str = "accepted"
    accepted: bool = True
    step_norm: float = 0.0
    krylov_iters: int = 0
    krylov_relres: float = 0.0
    work_units: float = 0.0
    seconds: float = 0.0
    inner_iterations: int = 0
    inner_grad_norm: float = 0.0
    inner_seconds: float = 0.0
    inner_converged: bool = True
    step_length: float = 1.0
    line_search_evals: int = 0
    status: str = "ok"
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # method-specific fields (flattened by to_dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def initial_state(problem: Problem, theta: Tensor, prev: Any = None) -> SolverState:
    """Evaluate Φ and ∇Φ at θ0 (2 work units)."""
    t0 = time.perf_counter()
    pt = problem.evaluate(theta, prev)
    if not math.isfinite(pt.value):
        raise ValueError(
            "the objective is not finite at the starting point: check the data scale and the "
            "initial weights"
        )
    g = problem.gradient(pt)
    inner = getattr(pt, "inner", None)
    return SolverState(pt, g, float(g.norm()), work=2.0,
                       inner_seconds=inner.seconds if inner else 0.0,
                       seconds=time.perf_counter() - t0)


def check_termination(
    state: SolverState, cfg: SolverConfig, max_iter: int | None, max_work: float | None,
    max_seconds: float | None = None,
) -> Termination:
    gn = state.grad_norm
    if gn <= cfg.grad_atol:
        return Termination.GRAD_ATOL
    if state.grad_norm0 > 0 and gn / state.grad_norm0 <= cfg.grad_rtol:
        return Termination.GRAD_RTOL
    if max_iter is not None and state.iteration >= max_iter:
        return Termination.MAX_ITER
    if max_work is not None and state.work >= max_work:
        return Termination.MAX_WORK
    if max_seconds is not None and state.seconds >= max_seconds:
        return Termination.MAX_SECONDS
    if state.radius is not None and state.radius < cfg.min_radius:
        return Termination.RADIUS
    if state.stalled:
        return Termination.LINE_SEARCH
    return Termination.RUNNING


def _subproblem_step(
    problem: Problem, state: SolverState, cfg: SolverConfig
) -> tuple[SolverState, Tensor, float, bool, int, float]:
    """Step s, predicted reduction, on-boundary flag, Krylov iterations, relres."""
    if cfg.subproblem == "steihaug":
        H = problem.gn_operator(state.pt)
        radius = state.radius
        if radius is None:
            first = steihaug_cg(H, state.g, math.inf, cfg.max_krylov, cfg.krylov_rtol)
            radius = float(first.s.norm())
            state = replace(state, work=state.work + 2 * first.n_products)
        res = steihaug_cg(H, state.g, radius, cfg.max_krylov, cfg.krylov_rtol)
        state = replace(state, radius=radius, work=state.work + 2 * res.n_products)
        return state, res.s, float(res.pred), bool(res.on_boundary), res.iterations, res.relres
    basis, iters = state.basis, 0
    if basis is None:
        basis = lanczos(problem.gn_operator(state.pt), -state.g, cfg.max_krylov, cfg.krylov_rtol)
        iters = basis.n_products
        state = replace(state, basis=basis, work=state.work + 2 * basis.n_products)
    radius = state.radius
    if radius is None:
        radius = float(newton_step_in_subspace(basis.T, basis.beta0).norm())
        state = replace(state, radius=radius)
    sol = tr_step_in_subspace(basis.T, basis.beta0, radius)
    return state, basis.expand(sol.z), float(sol.pred), bool(sol.on_boundary), iters, basis.relres


def trust_region_step(
    problem: Problem, state: SolverState, cfg: SolverConfig
) -> tuple[SolverState, StepInfo]:
    """One outer iteration: subproblem, trial evaluation, ratio test, radius update
    (or, for subproblem="tn", a truncated Gauss-Newton step with a line search)."""
    if cfg.subproblem == "tn":
        return truncated_newton_step(problem, state, cfg)
    t0 = time.perf_counter()
    state, s, pred, on_boundary, k_iters, relres = _subproblem_step(problem, state, cfg)
    step_norm = float(s.norm())
    trial = problem.evaluate(state.pt.theta + s.to(state.pt.theta), state.pt)
    work = state.work + 1
    ared = state.pt.value - trial.value
    rho = ared / pred if pred > 0 and math.isfinite(trial.value) else float("nan")
    outcome, radius = cfg.radius_rule.update(
        rho, state.radius, step_norm, on_boundary, state.grad_norm
    )
    inner = getattr(trial, "inner", None)
    inner_seconds = state.inner_seconds + (inner.seconds if inner else 0.0)
    status = _inner_status(state, trial)  # of the trial at s (before any extrapolation)
    if outcome is StepOutcome.REJECTED:
        keep = state.basis if cfg.subproblem == "lanczos" else None
        new = replace(state, radius=radius, basis=keep, work=work)
    else:
        if cfg.extrapolate and rho > cfg.radius_rule.eta_expand:  # ablation: try the step 2s
            far = problem.evaluate(state.pt.theta + 2 * s.to(state.pt.theta), trial)
            work += 1
            far_inner = getattr(far, "inner", None)
            inner_seconds += far_inner.seconds if far_inner else 0.0
            if far.value < trial.value:
                trial, step_norm = far, 2 * step_norm
        g = problem.gradient(trial)
        new = replace(state, pt=trial, g=g, radius=radius, basis=None, work=work + 1)
    new = replace(new, iteration=state.iteration + 1, inner_seconds=inner_seconds,
                  seconds=state.seconds + time.perf_counter() - t0)
    info = StepInfo(
        iteration=new.iteration,
        loss=new.pt.value,
        data_loss=new.pt.loss,
        grad_norm=new.grad_norm,
        radius=radius,
        rho=rho,
        outcome=outcome.value,
        accepted=outcome is not StepOutcome.REJECTED,
        step_norm=step_norm,
        krylov_iters=k_iters,
        krylov_relres=float(relres),
        work_units=new.work,
        seconds=new.seconds,
        inner_iterations=inner.iterations if inner else 0,
        inner_grad_norm=inner.grad_norm if inner else 0.0,
        inner_seconds=inner_seconds,
        inner_converged=inner.converged if inner else True,
        status=status,
    )
    return new, info


def _inner_status(state: SolverState, trial: Any) -> str:
    """A step's status: the trial's unconverged inner solve, else the current point's, or ok."""
    here = getattr(state.pt, "inner", None)
    inner = getattr(trial, "inner", None)
    if inner is not None and not inner.converged:
        return f"inner solve not converged: {inner.message}"
    if here is not None and not here.converged:
        return f"inner solve at the current point not converged: {here.message}"
    return "ok"


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
                    max_evals: int = 25, c1: float = 1e-4, c2: float = 0.9) -> LineStep:
    """φ(α) = Φ(θ + α d) from pt (φ'(0) = dg < 0); gradients only where Armijo holds."""
    trials: dict[float, list] = {}
    cost = {"work": 0.0, "inner": 0.0}

    def phi(a: float) -> float:
        trial = problem.evaluate(pt.theta + a * d, pt)
        inner = getattr(trial, "inner", None)
        cost["work"] += 1
        cost["inner"] += inner.seconds if inner else 0.0
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


def truncated_newton_step(
    problem: Problem, state: SolverState, cfg: SolverConfig
) -> tuple[SolverState, StepInfo]:
    """One truncated Gauss-Newton iteration: d by L-BFGS-preconditioned CG on H_GN d = −g
    (≤ max_krylov products), then a strong Wolfe line search from α = 1."""
    t0 = time.perf_counter()
    pt, g = state.pt, state.g
    pairs = state.pairs

    def precond(r: Tensor) -> Tensor:
        return two_loop(r, pairs)

    gnorm = state.grad_norm
    cg = pcg(problem.gn_operator(pt), -g, cfg.krylov_rtol * gnorm, cfg.max_krylov, precond)
    work = state.work + 2 * cg.iterations
    d = cg.x
    dg = float(g @ d)
    if not dg < 0:  # round-off: fall back to the preconditioned (or plain) gradient
        d = -precond(g)
        dg = float(g @ d)
        if not dg < 0:
            pairs, d, dg = (), -g, -gnorm**2
    step = wolfe_line_step(problem, pt, d, dg, 1.0, cfg.max_line_search)
    ls, trial, work = step.search, step.point, work + step.work
    inner_seconds = state.inner_seconds + step.inner_seconds
    if trial is None:  # no decrease: drop the curvature pairs; stop if there were none
        new = replace(state, work=work, pairs=(), stalled=not state.pairs)
        alpha, step_norm, outcome = 0.0, 0.0, "rejected (line search failed)"
    else:
        g_new = step.gradient
        s = trial.theta - pt.theta
        pairs = newest(pairs, curvature_pair(s, g_new - g), cfg.tn_memory)
        new = replace(state, pt=trial, g=g_new, work=work, pairs=pairs, stalled=False)
        alpha, step_norm, outcome = float(ls.alpha), float(s.norm()), "accepted (line search)"
    new = replace(new, iteration=state.iteration + 1, inner_seconds=inner_seconds,
                  seconds=state.seconds + time.perf_counter() - t0)
    inner = getattr(trial, "inner", None)
    info = StepInfo(
        iteration=new.iteration, loss=new.pt.value, data_loss=new.pt.loss,
        grad_norm=new.grad_norm, radius=float("nan"), rho=float("nan"), outcome=outcome,
        accepted=trial is not None, step_norm=step_norm, krylov_iters=cg.iterations,
        krylov_relres=cg.residual / gnorm if gnorm > 0 else 0.0, work_units=new.work,
        seconds=new.seconds, inner_iterations=inner.iterations if inner else 0,
        inner_grad_norm=inner.grad_norm if inner else 0.0, inner_seconds=inner_seconds,
        inner_converged=inner.converged if inner else True, step_length=alpha,
        line_search_evals=ls.evals, status=_inner_status(state, trial),
    )
    return new, info


def lbfgs_step(
    problem: Problem, state: SolverState, memory: int, max_line_search: int = 25,
    c1: float = 1e-4, c2: float = 0.9,
) -> tuple[SolverState, StepInfo | None]:
    """One L-BFGS iteration: d = −H g (two-loop over the pairs), strong Wolfe line search from
    α = 1 (from min(1, 1/‖g‖₁) without pairs, as torch.optim.LBFGS), new pair (s, Δg).

    A failed line search takes no step: the state says so (stalled; LINE_SEARCH) and no record
    is returned."""
    t0 = time.perf_counter()
    pt, g, pairs = state.pt, state.g, state.pairs
    d = -two_loop(g, pairs)
    dg = float(g @ d)
    if not dg < 0:  # lost positive definiteness numerically: restart from −g
        pairs, d, dg = (), -g, -float(g @ g)
    alpha1 = 1.0 if pairs else min(1.0, 1.0 / float(g.abs().sum()))
    step = wolfe_line_step(problem, pt, d, dg, alpha1, max_line_search, c1, c2)
    ls, trial = step.search, step.point
    new = replace(state, work=state.work + step.work, pairs=pairs,
                  inner_seconds=state.inner_seconds + step.inner_seconds)
    if trial is None:
        return replace(new, stalled=True, seconds=state.seconds + time.perf_counter() - t0), None
    s = trial.theta - pt.theta
    pairs = newest(pairs, curvature_pair(s, step.gradient - g), memory)
    new = replace(new, pt=trial, g=step.gradient, pairs=pairs, iteration=state.iteration + 1,
                  seconds=state.seconds + time.perf_counter() - t0)
    info = StepInfo(
        iteration=new.iteration, loss=trial.value, data_loss=trial.loss,
        grad_norm=new.grad_norm, step_norm=float(s.norm()), work_units=new.work,
        seconds=new.seconds, inner_iterations=trial.inner.iterations,
        inner_grad_norm=trial.inner.grad_norm, inner_seconds=new.inner_seconds,
        inner_converged=trial.inner.converged, step_length=float(ls.alpha),
        line_search_evals=ls.evals, status=_inner_status(state, trial),
        extra={"wolfe": ls.wolfe, "line_search": ls.message},
    )
    return new, info
