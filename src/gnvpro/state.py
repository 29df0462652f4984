"""The outer solvers' values: the problem they run on (Problem), the state of an outer iteration
(SolverState, its point as a state dict holds it: SavedPoint), what one iteration did (StepInfo)
and why a run stops (Termination). Descents (gnvpro.descent) and searches (gnvpro.search) take
a state and return a new one; nothing here changes a state in place.

Work units (docs/method.md §4): initial objective + gradient 2, each H v 2, each trial value 1, the
gradient at an accepted point 1 (its forward pass is the trial's). The inner solve is not counted
in work units; its seconds are recorded separately.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any, Protocol

from torch import Tensor

from .linalg import KrylovBasis

__all__ = ["Problem", "SavedPoint", "SolverState", "StepInfo", "SwitchMemo", "Termination",
           "initial_state", "inner_status"]


class Problem(Protocol):
    def evaluate(self, theta: Tensor, prev: Any = None, *,
                 outer_grad_norm: float | None = None) -> Any: ...
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


@dataclass(frozen=True)
class SwitchMemo:
    """What gnvpro.descent.Hybrid carries from one iteration to the next: the mode it runs
    (``mode``: "lbfgs" or "cg"), the ``phase`` ("run": in the mode, "probe": one iteration of
    the other mode, "after": the mode's iterations after a probe), the (Φ, work units) at the
    start of each iteration of the phase so far (``marks``, the newest last, at most 8), the
    probe's rate −ΔΦ/Δwork and work, the mode's rate before the probe, the iterations since the
    last probe, the current gap between probes and the work where the phase started (nan: not
    measured)."""

    mode: str
    phase: str
    marks: tuple
    probe_rate: float
    probe_work: float
    before_rate: float
    since: int
    gap: int
    started: float

    MODES = ("lbfgs", "cg")
    PHASES = ("run", "probe", "after")
    KEEP = 8

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "marks": [list(m) for m in self.marks]}

    @classmethod
    def from_dict(cls, d: Any) -> SwitchMemo:
        """The memo of ``to_dict()``'s dict, checked (ValueError / TypeError naming the
        entry)."""
        names = [f.name for f in fields(cls)]
        if not isinstance(d, dict) or sorted(d) != sorted(names):
            raise ValueError(f"state_dict['memo'] must be None or a dict with the keys "
                             f"{', '.join(names)} (gnvpro.state.SwitchMemo), got {d!r:.200}")
        for k, allowed in (("mode", cls.MODES), ("phase", cls.PHASES)):
            if d[k] not in allowed:
                raise ValueError(f"state_dict['memo'][{k!r}] must be one of {allowed}, got "
                                 f"{d[k]!r:.50}")
        for k in ("since", "gap"):
            if isinstance(d[k], bool) or not isinstance(d[k], int) or d[k] < 0:
                raise TypeError(f"state_dict['memo'][{k!r}] must be an int >= 0, got "
                                f"{d[k]!r:.50}")
        reals = [d["probe_rate"], d["probe_work"], d["before_rate"], d["started"]]
        marks = d["marks"]
        if not (isinstance(marks, list | tuple) and 1 <= len(marks) <= cls.KEEP
                and all(isinstance(m, list | tuple) and len(m) == 2 for m in marks)):
            raise ValueError(f"state_dict['memo']['marks'] must be 1 to {cls.KEEP} pairs "
                             f"[Φ, work], got {marks!r:.100}")
        if not all(isinstance(v, int | float) and not isinstance(v, bool)
                   for v in reals + [v for m in marks for v in m]):
            raise TypeError("state_dict['memo']: probe_rate, probe_work, before_rate, "
                            "started and the marks must be real numbers")
        return cls(**{**d, "marks": tuple((float(a), float(b)) for a, b in marks)})


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
    pairs: tuple = ()  # line search: L-BFGS pairs (s, y, 1/sᵀy) of the accepted steps
    stalled: bool = False  # line search: the last one found no decrease and had no pairs
    memo: SwitchMemo | None = None  # line search: what a Hybrid descent carries over

    @property
    def grad_norm(self) -> float:
        return float(self.g.norm())

    def to_dict(self) -> dict[str, Any]:
        """θ, W, value and factor of the point, g, grad_norm0, radius, basis (its fields),
        pairs ([s, y, ρ] lists), stalled, memo (a dict or None) and the counters. Tensors are
        the state's own (a step replaces them, never changes them in place); the point's factor
        is what its next inner solve would be preconditioned with (InnerSolution.factor; formed
        here if the solve kept none)."""
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
            "memo": None if self.memo is None else self.memo.to_dict(),
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
                   tuple((s, y, float(r)) for s, y, r in d["pairs"]), bool(d.get("stalled")),
                   None if d.get("memo") is None else SwitchMemo.from_dict(d["memo"]))


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


def inner_status(state: SolverState, trial: Any) -> str:
    """A step's status: the trial's unconverged inner solve, else the current point's, or ok."""
    here = getattr(state.pt, "inner", None)
    inner = getattr(trial, "inner", None)
    if inner is not None and not inner.converged:
        return f"inner solve not converged: {inner.message}"
    if here is not None and not here.converged:
        return f"inner solve at the current point not converged: {here.message}"
    return "ok"


