"""Methods whose iterate is a gnvpro.solver SolverState on a Problem (Φ_red(θ) for variable
projection, Φ(θ, W) for joint Gauss-Newton): counters, the iterate, termination, one step, and
writing the iterate's (θ, W) back into the model.

A step on other data (a new batch: different values, not merely new tensors, see
methods.base.BatchIdentity) starts a new problem at the current weights. What carries over to it
besides the counters is the constructor's ``carry`` (a subset of CARRY): "radius", the trust-
region radius (GNvpro's and JointGaussNewton's default: the paper's stochastic scheme on fixed
sub-batches), "pairs", the curvature pairs (L-BFGS memory, the truncated-GN preconditioner;
dropped by default: secant pairs of another batch's objective).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..linalg import KrylovBasis
from ..losses import Loss
from ..reduce import SampleReducer
from ..regularizer import LinearMap
from ..solver import (
    SavedPoint,
    SolverState,
    StepInfo,
    Termination,
    check_termination,
    initial_state,
    outer_step,
)
from ..threads import auto_threads, intra_op_threads
from ..validate import check_real, describe
from .base import Iterate, ModelMethod

__all__ = ["CARRY", "SolverMethod"]

CARRY = ("radius", "pairs")  # what a new batch may inherit (besides the counters)


class SolverMethod(ModelMethod):
    """Subclasses give set_batch (building ``self.problem`` and ``self.state``, by
    ``_new_state``) and ``_theta_W(point)``; ``config`` is a SolverConfig (descent, search).

    ``self.state`` is the solver's state (gnvpro.solver.SolverState), ``state_dict()`` is it as
    a dict and ``load_state_dict`` assigns it (its point re-evaluated on the next batch)."""

    problem: Any = None
    state: SolverState | None = None
    default_carry: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module, loss: str | Loss = "least_squares",
                 alpha_w: float = 1e-10, alpha_theta: float = 1e-10, head: str | None = None,
                 config: Any = None, regularizer: LinearMap | None = None,
                 carry: Iterable[str] | None = None, reducer: SampleReducer | None = None
                 ) -> None:
        """carry: what a new batch inherits besides the counters (module docstring); None:
        the class's ``default_carry``. reducer: how the batch's row sums become averages
        (gnvpro.reduce; None: the mean over the batch; a DistributedReducer makes each process's
        batch its shard of one problem)."""
        self.carry: frozenset[str] = _check_carry(carry, self.default_carry)
        if reducer is not None and not isinstance(reducer, SampleReducer):
            raise TypeError(f"reducer must be a SampleReducer, got {describe(reducer)}")
        self.reducer = reducer
        super().__init__(model, loss, alpha_w, alpha_theta, head, config, regularizer)

    # ------------------------------------------------------------------ hooks
    def set_batch(self, x: Tensor, y: Tensor) -> None:
        raise NotImplementedError

    def _outer_step(self, state: SolverState) -> tuple[SolverState, StepInfo | None]:
        """One outer iteration: the config's search along its descent's step."""
        return outer_step(self.problem, state, self.config)

    def _theta_W(self, pt: Any) -> tuple[Tensor, Tensor]:
        """θ (flat) and W = [W̃, b] of a point."""
        raise NotImplementedError

    def _carry(self, old: SolverState, fresh: SolverState) -> SolverState:
        """The state on a new batch: the counters carry over, and what ``self.carry`` names."""
        kept = {k: getattr(old, k) for k in self.carry}
        return replace(fresh, work=old.work + fresh.work, iteration=old.iteration,
                       seconds=old.seconds + fresh.seconds,
                       inner_seconds=old.inner_seconds + fresh.inner_seconds, **kept)

    # ------------------------------------------------------------------ state
    @property
    def own_work(self) -> float:
        """Work units as the solver counts them (passes over the batch each step was on)."""
        return 0.0 if self.state is None else self.state.work

    @property
    def seconds(self) -> float:
        return 0.0 if self.state is None else self.state.seconds

    @property
    def inner_seconds(self) -> float:
        return 0.0 if self.state is None else self.state.inner_seconds

    def current(self) -> Iterate:
        assert self.state is not None and self.problem is not None, "set_batch(x, y) first"
        pt = self.state.pt
        return Iterate(pt.value, pt.loss, pt.S, self.state.grad_norm)

    def termination(self) -> Termination:
        """Gradient tolerances, a collapsed trust region, a failed line search (the config's
        grad_rtol, grad_atol, min_radius)."""
        if self.state is None or self.problem is None:
            return Termination.RUNNING
        return check_termination(self.state, self.config, None, None)

    @torch.no_grad()
    def _write_back(self) -> None:
        assert self.problem is not None and self.state is not None
        theta, W = self._theta_W(self.state.pt)
        named = self.problem.features.layout.unflatten(theta)
        for name, p in self.split.feature_params().items():
            p.copy_(named[name].to(p))
        self.split.set_head_weights(W)
        self._batch.weights_written()

    # ------------------------------------------------------------------- step
    def step(self, x: Tensor | Callable | None = None, y: Tensor | None = None
             ) -> StepInfo | None:
        """One outer iteration on the batch (x, y); the model holds the result (None: no step
        was possible here, termination() says why: the trust region has collapsed below
        min_radius, no step can lower Φ in float64)."""
        self._check_step(x, y)
        with intra_op_threads(self._threads(x)):
            self.set_batch(x, y)
            assert self.state is not None
            if self.termination() is Termination.RADIUS:
                return None
            try:
                state, info = self._outer_step(self.state)
            except (torch.linalg.LinAlgError, ArithmeticError) as e:
                raise ValueError(f"the outer step failed numerically ({type(e).__name__}: {e}); "
                                 "the model and the optimiser are unchanged. The data or the "
                                 "weights are badly scaled: standardise x and y") from e
        self.state = state
        self._write_back()
        return info

    def _threads(self, x: Tensor) -> int | None:
        """config.threads, or one thread for a small CPU problem (gnvpro.threads)."""
        threads = getattr(self.config, "threads", None)
        if threads is not None:
            return threads
        n_params = sum(p.numel() for p in self.split.feature_params().values())
        n_params += self.split.head.weight.numel()  # the W-side products scale with c·p
        n = x.shape[0] if isinstance(x, Tensor) and x.ndim > 0 else 1  # x is checked later
        return auto_threads(n, n_params, self.split.head.weight.device)

    # ---------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Optimiser state only (as torch.optim; gnvpro.save_checkpoint saves it with the
        model): the settings (method, config, loss, α_W, α_θ) and ``SolverState.to_dict()``,
        the state itself: the point's θ and W (float64), Φ there and its H_W factor, the
        gradient, the radius, the Krylov basis, the curvature pairs and the counters. Tensors
        are the state's own (no copies; a step replaces them, never changes them in place)."""
        state = self.state or SolverState(None, None, math.nan)  # type: ignore[arg-type]
        return {**self._settings(), **state.to_dict()}

    def load_state_dict(self, sd: dict) -> None:
        """Make a state_dict() this optimiser's state (an assignment: the settings, α and the
        config are adopted, as torch.optim adopts a saved param_group's; the loss must be the
        same). Everything is checked first; a refused dict changes nothing.

        The next set_batch/step re-evaluates the saved point on its data (not counted in work
        units): at the saved float64 θ, when the model still holds θ and W (rounded to its
        dtype, as save_checkpoint / load_checkpoint leave it) and Φ there is the saved value
        (bit for bit: the same data; within 1e-12 relative: the same rows summed in another
        order, e.g. sharded over another number of processes), the run continues as it would
        have without the interruption (bit for bit in the first case); otherwise the data or
        the weights are new, and it starts there as on a new batch (the counters and ``carry``
        kept). A dict without θ (gnvpro before the state
        was a value) restores radius, basis, pairs and counters at the model's weights."""
        config, alpha_w, alpha_theta = self._check_settings(sd, {"radius", "work", "iteration"})
        state = self._check_state(sd)
        self.alpha_w, self.alpha_theta, self.config = alpha_w, alpha_theta, config
        self.problem, self.state = None, state
        self._batch.forget()
        self._work_mark = None

    def _n_theta(self) -> int:
        """The length of the solver's variable θ (the feature weights; JointGaussNewton: and W)."""
        return sum(p.numel() for p in self.split.feature_params().values())

    def _check_state(self, sd: dict) -> SolverState | None:
        """state_dict()'s state part, checked against this model, on its device."""
        n, dev = self._n_theta(), self.split.head.weight.device
        d: dict[str, Any] = {k: check_real(f"state_dict[{k!r}]", sd.get(k, 0.0), low=0.0)
                             for k in ("work", "seconds", "inner_seconds")}
        d["iteration"] = check_real("state_dict['iteration']", sd["iteration"], integer=True,
                                    low=0)
        radius = sd["radius"]
        d["radius"] = radius if radius is None else check_real(
            "state_dict['radius']", radius, low=0.0, low_inclusive=False)
        d["pairs"] = [[_vector(f"state_dict['pairs'][{i}]", t, n, dev) for t in p[:2]] + [p[2]]
                      for i, p in enumerate(_check_pairs(sd.get("pairs", [])))]
        d["basis"] = _check_basis(sd.get("basis"), n, dev)
        if sd.get("theta") is None:  # never stepped, or a checkpoint from before θ was saved
            if d["work"] == 0 and d["iteration"] == 0:
                return None
            d["theta"] = None
            return SolverState.from_dict(d)
        d["theta"] = _vector("state_dict['theta']", sd["theta"], n, dev)
        d["g"] = _vector("state_dict['g']", sd.get("g"), n, dev)
        shape = tuple(self.split.head_weights().shape)
        W = sd.get("W")
        if not (isinstance(W, Tensor) and tuple(W.shape) == shape
                and bool(torch.isfinite(W).all())):
            raise ValueError(f"state_dict['W'] must be a finite {shape} tensor (the head), got "
                             f"{describe(W)}: it was saved for another model")
        d["W"] = W.to(device=dev, dtype=torch.float64)
        d["value"] = check_real("state_dict['value']", sd.get("value"))
        d["grad_norm0"] = check_real("state_dict['grad_norm0']", sd.get("grad_norm0"), low=0.0)
        factor = sd.get("factor")
        if factor is not None and not (isinstance(factor, Tensor) and factor.ndim == 2
                                       and factor.shape[0] == factor.shape[1] == W.numel()):
            raise ValueError(f"state_dict['factor'] must be None or a {W.numel()} × "
                             f"{W.numel()} tensor (the Cholesky factor of H_W)")
        d["factor"] = factor if factor is None else factor.to(device=dev, dtype=torch.float64)
        if not isinstance(sd.get("stalled", False), bool):
            raise TypeError(f"state_dict['stalled'] must be a bool, got "
                            f"{describe(sd['stalled'])}")
        d["stalled"] = sd.get("stalled", False)
        d["memo"] = sd.get("memo")  # checked by SwitchMemo.from_dict below
        return SolverState.from_dict(d)

    def _new_state(self, problem: Any, start: Callable[[SolverState | None], tuple[Tensor, Any]]
                   ) -> SolverState:
        """The state on a new problem (set_batch). After load_state_dict: the saved state with
        its point re-evaluated, when the model holds it and Φ is the saved value bit for bit.
        Otherwise initial_state at ``start(old)`` = (θ, prev), with the old state's counters
        and ``carry`` (a state without θ: its radius, basis and pairs, work not counted)."""
        old = self.state
        if old is not None and isinstance(old.pt, SavedPoint) and self._model_holds(old.pt):
            t0 = time.perf_counter()
            pt = problem.evaluate(old.pt.theta, old.pt, outer_grad_norm=math.inf)  # keeps W
            if _same_value(pt.value, old.pt.value):  # the saved data: the saved state
                inner = getattr(pt, "inner", None)
                return replace(old, pt=pt, seconds=old.seconds + time.perf_counter() - t0,
                               inner_seconds=old.inner_seconds + getattr(inner, "seconds", 0.0))
        theta, prev = start(old)
        fresh = initial_state(problem, theta, prev)
        if old is None:
            return fresh
        if old.pt is None:  # a checkpoint without θ: at the model's weights
            return replace(fresh, radius=old.radius, basis=old.basis, pairs=old.pairs,
                           work=old.work, iteration=old.iteration,
                           seconds=old.seconds + fresh.seconds,
                           inner_seconds=old.inner_seconds + fresh.inner_seconds)
        return self._carry(old, fresh)

    @torch.no_grad()
    def _model_holds(self, pt: SavedPoint) -> bool:
        """Whether the model's weights are pt's θ and W in its dtype (as _write_back leaves
        them): nobody has written into the model since the state was saved."""
        i = 0
        for p in self.split.feature_params().values():
            k = p.numel()
            if not torch.equal(p.detach().reshape(-1), pt.theta[i:i + k].to(p)):
                return False
            i += k
        return torch.equal(self.split.head_weights(), pt.W.to(self.split.head.weight))


SAME_DATA_RTOL = 1e-12


def _same_value(now: float, saved: float) -> bool:
    """Whether Φ at the saved θ is the saved Φ: bitwise on the same data in the same order, and
    within SAME_DATA_RTOL when only the order of the sums changed (the rows split over another
    number of processes, or permuted). The sums are float64; other data change Φ by far more."""
    return now == saved or abs(now - saved) <= SAME_DATA_RTOL * max(abs(now), abs(saved))


def _check_carry(carry: object, default: tuple[str, ...]) -> frozenset[str]:
    """carry: None (the default) or an iterable of names from CARRY."""
    if carry is None:
        return frozenset(default)
    if isinstance(carry, str) or not isinstance(carry, Iterable):
        raise TypeError(f"carry must be a collection of names from {CARRY} (e.g. ('radius',) "
                        f"or ()), got {describe(carry)}")
    names = list(carry)
    unknown = [c for c in names if c not in CARRY]
    if unknown:
        raise ValueError(f"carry: unknown name(s) {unknown}; choose from {CARRY}")
    return frozenset(names)


def _vector(name: str, t: object, n: int, device: torch.device) -> Tensor:
    """A finite float64 vector of n entries (θ's size) on ``device``."""
    if not (isinstance(t, Tensor) and t.ndim == 1 and bool(torch.isfinite(t).all())):
        raise ValueError(f"{name} must be a finite vector, got {describe(t)}")
    if t.numel() != n:
        raise ValueError(f"{name} has {t.numel()} entries but this model's θ has {n}: the "
                         f"state dict was saved for another model")
    return t.to(device=device, dtype=torch.float64)


def _check_pairs(pairs: object) -> list:
    """state_dict['pairs']: a list of [s, y, 1/sᵀy] (the vectors are checked by _vector)."""
    if not isinstance(pairs, list | tuple):
        raise TypeError(f"state_dict['pairs'] must be a list, got {describe(pairs)}")
    for i, p in enumerate(pairs):
        if not (isinstance(p, list | tuple) and len(p) == 3 and all(isinstance(t, Tensor)
                                                                      for t in p[:2])):
            raise ValueError(f"state_dict['pairs'][{i}] must be [s, y, rho] with finite "
                             f"vectors s, y of one size")
        check_real(f"state_dict['pairs'][{i}][2]", p[2])
    return list(pairs)


def _check_basis(basis: object, n: int, device: torch.device) -> dict | None:
    """state_dict['basis']: None, or the fields of a KrylovBasis (V: k × n, T: k × k)."""
    if basis is None:
        return None
    try:
        b = KrylovBasis(**basis)  # type: ignore[arg-type]
        ok = (b.V.ndim == 2 and b.T.shape == (b.V.shape[0], b.V.shape[0])
              and bool(torch.isfinite(b.V).all()) and bool(torch.isfinite(b.T).all()))
    except (TypeError, AttributeError):
        ok = False
    if not ok:
        raise ValueError("state_dict['basis'] must be None or a Krylov basis (V: k × N, "
                         "T: k × k, finite)")
    if b.V.shape[1] != n:
        raise ValueError(f"state_dict['basis'] has vectors of {b.V.shape[1]} entries but this "
                         f"model's θ has {n}: the state dict was saved for another model")
    return {f.name: getattr(b, f.name) for f in dataclasses.fields(b)} | {
        "V": b.V.to(device=device, dtype=torch.float64)}
