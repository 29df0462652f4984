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
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..linalg import KrylovBasis
from ..losses import Loss
from ..regularizer import LinearMap
from ..solver import SolverState, StepInfo, Termination, check_termination
from ..threads import auto_threads, intra_op_threads
from ..validate import check_real, config_from_dict, describe
from .base import Iterate, ModelMethod

__all__ = ["CARRY", "SolverMethod"]

CARRY = ("radius", "pairs")  # what a new batch may inherit (besides the counters)


class SolverMethod(ModelMethod):
    """Subclasses give set_batch (building ``self.problem`` and ``self.state``),
    ``_outer_step(state)`` and ``_theta_W(point)``."""

    problem: Any = None
    state: SolverState | None = None
    _resume: dict | None = None  # after load_state_dict, until the next evaluation
    default_carry: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module, loss: str | Loss = "least_squares",
                 alpha_w: float = 1e-10, alpha_theta: float = 1e-10, head: str | None = None,
                 config: Any = None, regularizer: LinearMap | None = None,
                 carry: Iterable[str] | None = None) -> None:
        """carry: what a new batch inherits besides the counters (module docstring); None:
        the class's ``default_carry``."""
        self.carry: frozenset[str] = _check_carry(carry, self.default_carry)
        super().__init__(model, loss, alpha_w, alpha_theta, head, config, regularizer)

    # ------------------------------------------------------------------ hooks
    def set_batch(self, x: Tensor, y: Tensor) -> None:
        raise NotImplementedError

    def _outer_step(self, state: SolverState) -> tuple[SolverState, StepInfo | None]:
        raise NotImplementedError

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
        assert self.state is not None, "set_batch(x, y) first"
        pt = self.state.pt
        return Iterate(pt.value, pt.loss, pt.S, self.state.grad_norm)

    def termination(self) -> Termination:
        """Gradient tolerances, a collapsed trust region, a failed line search (the config's
        grad_rtol, grad_atol, min_radius)."""
        if self.state is None:
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
        was possible here, termination() says why)."""
        self._check_step(x, y)
        with intra_op_threads(self._threads(x)):
            self.set_batch(x, y)
            assert self.state is not None
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
        """Optimiser state only (as torch.optim): settings, α, the trust-region radius and
        Krylov basis, the curvature pairs and the counters. gnvpro.save_checkpoint saves it
        with the model."""
        s = self.state
        return {
            "method": type(self).__name__, "config": self.config.to_dict(),
            "loss": self.loss.name, "alpha_w": self.alpha_w, "alpha_theta": self.alpha_theta,
            "radius": None if s is None else s.radius,
            "iteration": 0 if s is None else s.iteration,
            **{k: 0.0 if s is None else float(getattr(s, k))
               for k in ("work", "seconds", "inner_seconds")},
            "pairs": [] if s is None else [[a.clone(), b.clone(), r] for a, b, r in s.pairs],
            "basis": None if s is None or s.basis is None else dataclasses.asdict(s.basis),
        }

    def load_state_dict(self, sd: dict) -> None:
        """Restore a state_dict(): α, config, radius, basis, pairs and counters (the loss must
        be the same). The next evaluation, at the model's weights, restores the saved iterate
        and is not counted in work units (a resumed run counts the work of an uninterrupted
        one; its seconds include the re-evaluation). Everything is checked first; a refused
        dict changes nothing."""
        name = type(self).__name__
        if not isinstance(sd, dict):
            raise TypeError(f"load_state_dict expects the dict of {name}.state_dict(), got "
                            f"{describe(sd)}")
        if "model" in sd:
            raise ValueError(f"this looks like a model+optimiser checkpoint: load it with "
                             f"gnvpro.load_checkpoint(path, model, opt), or pass sd['optimizer']"
                             f" to {name}.load_state_dict")
        missing = {"radius", "work", "iteration"} - set(sd)
        if missing:
            raise ValueError(f"not a {name} state dict: missing {sorted(missing)}")
        if sd.get("method", name) != name:
            raise ValueError(f"the state dict is of {sd['method']}, not {name}")
        radius = sd["radius"]
        if radius is not None:
            radius = check_real("state_dict['radius']", radius, low=0.0, low_inclusive=False)
        resume = {k: check_real(f"state_dict[{k!r}]", sd.get(k, 0.0), low=0.0)
                  for k in ("work", "seconds", "inner_seconds")}
        resume["iteration"] = check_real("state_dict['iteration']", sd["iteration"],
                                         integer=True, low=0)
        if "loss" in sd and sd["loss"] != self.loss.name:
            raise ValueError(f"the state dict was saved with loss {sd['loss']!r} but this "
                             f"optimiser uses {self.loss.name!r}: create {name}(model, "
                             f"loss={sd['loss']!r}) to load it")
        alpha_w = check_real("state_dict['alpha_w']", sd.get("alpha_w", self.alpha_w), low=0.0)
        alpha_theta = check_real("state_dict['alpha_theta']",
                                 sd.get("alpha_theta", self.alpha_theta), low=0.0)
        if alpha_w == 0 and not self.loss.is_quadratic:
            raise ValueError(f"state_dict['alpha_w'] must be > 0 for the {self.loss.name} loss")
        resume.update(radius=radius, pairs=_check_pairs(sd.get("pairs", [])),
                      basis=_check_basis(sd.get("basis")))
        config = self.config
        if "config" in sd:
            config = config_from_dict(self.config_type, sd["config"], "state_dict['config']")
        self.alpha_w, self.alpha_theta, self.config = alpha_w, alpha_theta, config
        self.problem, self.state, self._resume = None, None, resume
        self._batch.forget()
        self._work_mark = None

    def _restore(self, fresh: SolverState) -> SolverState:
        """The state of load_state_dict's dict at its re-evaluated point ``fresh``."""
        r, self._resume = self._resume, None
        assert r is not None
        n = fresh.pt.theta.numel()
        vectors = [t for s, y, _ in r["pairs"] for t in (s, y)]
        if r["basis"] is not None:
            vectors.append(r["basis"].V[0])
        if any(t.numel() != n for t in vectors):
            raise ValueError(f"the state dict's curvature pairs / Krylov basis have another size "
                             f"than this model's {n} weights: it was saved for another model")
        dev = fresh.pt.theta
        pairs = tuple((s.to(dev), y.to(dev), rho) for s, y, rho in r["pairs"])
        basis = r["basis"] if r["basis"] is None else replace(r["basis"], V=r["basis"].V.to(dev))
        return replace(fresh, radius=r["radius"], work=r["work"], iteration=r["iteration"],
                       pairs=pairs, basis=basis, seconds=r["seconds"] + fresh.seconds,
                       inner_seconds=r["inner_seconds"] + fresh.inner_seconds)


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


def _check_pairs(pairs: object) -> tuple:
    """state_dict['pairs']: a list of [s, y, 1/sᵀy] with s, y finite vectors of one size."""
    if not isinstance(pairs, list | tuple):
        raise TypeError(f"state_dict['pairs'] must be a list, got {describe(pairs)}")
    out = []
    for i, p in enumerate(pairs):
        ok = (isinstance(p, list | tuple) and len(p) == 3 and all(
            isinstance(t, Tensor) and t.ndim == 1 and bool(torch.isfinite(t).all())
            for t in p[:2]) and p[0].shape == p[1].shape)
        if not ok:
            raise ValueError(f"state_dict['pairs'][{i}] must be [s, y, rho] with finite "
                             f"vectors s, y of one size")
        out.append((p[0].to(torch.float64), p[1].to(torch.float64), float(p[2])))
    return tuple(out)


def _check_basis(basis: object) -> KrylovBasis | None:
    """state_dict['basis']: None, or the fields of a KrylovBasis (V: k × N, T: k × k)."""
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
    return b
