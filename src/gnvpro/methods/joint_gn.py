"""Joint Gauss-Newton ("GN"): the trust-region solver on z = (θ, vec W) without variable
projection (gnvpro.joint.JointProblem: coupled Gauss-Newton matrix, or the reference's
block-diagonal one), W starting at W*(θ0) on the first batch; later batches continue from the
current (θ, W) and carry the radius over. Work units as gnvpro.solver counts them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, replace

import torch
from torch import Tensor, nn

from ..head import check_head_is_last, split_model
from ..joint import JointProblem
from ..losses import Loss, make_loss
from ..regularizer import LinearMap
from ..solver import (
    SolverConfig,
    SolverState,
    StepInfo,
    Termination,
    check_termination,
    initial_state,
    trust_region_step,
)
from ..trust_region import RadiusRule
from ..validate import check_model, check_real, config_from_dict, describe, validate_config
from ..varpro import InnerOptions, ReducedObjective, WarmStart
from .base import BatchIdentity, Iterate, no_closure

__all__ = ["JointGaussNewton", "JointGNConfig"]


@dataclass(frozen=True)
class JointGNConfig:
    """Settings of joint Gauss-Newton (defaults: the paper's trust region)."""

    coupled: bool = True  # False: the reference's block-diagonal Gauss-Newton matrix
    max_krylov: int = 20
    krylov_rtol: float = 1e-2
    subproblem: str = "lanczos"  # or "steihaug", "tn" (gnvpro.solver)
    radius_rule: RadiusRule = field(default_factory=RadiusRule)
    grad_rtol: float = 1e-10
    grad_atol: float = 0.0
    min_radius: float = 1e-14
    tn_memory: int = 10
    max_line_search: int = 25
    extrapolate: bool = False
    jvp_mode: str = "auto"
    inner_rtol: float = 1e-10  # the W*(θ0) solve
    inner_atol: float = 1e-10
    inner_max_iter: int = 100

    def __post_init__(self) -> None:
        validate_config(self)

    def solver(self) -> SolverConfig:
        return SolverConfig(**{f.name: getattr(self, f.name) for f in fields(SolverConfig)})

    def to_dict(self) -> dict:
        return asdict(self)


class JointGaussNewton:
    """Trust-region Gauss-Newton on (θ, W) of a model whose last layer is affine."""

    step_work = None

    def __init__(self, model: nn.Module, loss: str | Loss = "least_squares",
                 alpha_w: float = 1e-10, alpha_theta: float = 1e-10, head: str | None = None,
                 config: JointGNConfig | None = None,
                 regularizer: LinearMap | None = None) -> None:
        if config is not None and not isinstance(config, JointGNConfig):
            raise TypeError(f"config must be a gnvpro.JointGNConfig or None, got "
                            f"{describe(config)}")
        self.split = split_model(model, head)
        check_model(self.split)
        self.model = model
        self.loss = make_loss(loss) if isinstance(loss, str) else loss
        self.alpha_w = check_real("alpha_w", alpha_w, low=0.0)
        self.alpha_theta = check_real("alpha_theta", alpha_theta, low=0.0)
        self.config = config or JointGNConfig()
        self.solver_config = self.config.solver()
        self.regularizer = regularizer
        self.problem: JointProblem | None = None
        self.state: SolverState | None = None
        self._batch = BatchIdentity(model)
        self._resumed = False  # after load_state_dict: start from the model's (θ, W) as is

    @property
    def work(self) -> float:
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
        if self.state is None:
            return Termination.RUNNING
        return check_termination(self.state, self.solver_config, None, None)

    def set_batch(self, x: Tensor, y: Tensor) -> None:
        """Φ(θ, W) and its gradient on (x, y) at the current (θ, W) — on the first batch at
        (θ0, W*(θ0)) (2 work units)."""
        if self._batch.same(x, y):
            return
        c = self.config
        problem = JointProblem(self.split, self.loss, x, y, self.alpha_w, self.alpha_theta,
                               B=self.regularizer, coupled=c.coupled, jvp_mode=c.jvp_mode)
        check_head_is_last(self.split, x[: min(len(x), 16)])
        old = self.state
        t0, inner_seconds = time.perf_counter(), 0.0
        theta0 = torch.cat([p.detach().reshape(-1).to(torch.float64)
                            for p in self.split.feature_params().values()])
        if old is None and self._resumed:
            z = problem.pack(theta0, self.split.head_weights().to(torch.float64))
        elif old is None:  # θ0 with W*(θ0) on this batch
            obj = ReducedObjective(self.split, self.loss, x, y, self.alpha_w, self.alpha_theta,
                                   B=self.regularizer,
                                   inner=InnerOptions(c.inner_rtol, c.inner_atol,
                                                      c.inner_max_iter))
            pt = obj.evaluate(theta0, WarmStart(self.split.head_weights().to(torch.float64)))
            inner_seconds = pt.inner.seconds
            z = problem.pack(pt.theta, pt.W)
        else:
            z = old.pt.theta
        setup = time.perf_counter() - t0
        fresh = initial_state(problem, z)
        fresh = replace(fresh, seconds=fresh.seconds + setup,
                        inner_seconds=fresh.inner_seconds + inner_seconds)
        if old is not None:
            fresh = replace(fresh, radius=old.radius, work=old.work + fresh.work,
                            iteration=old.iteration, seconds=old.seconds + fresh.seconds,
                            inner_seconds=old.inner_seconds + fresh.inner_seconds)
        self.problem, self.state, self._resumed = problem, fresh, False
        self._batch.remember(x, y)
        self._write_back()

    @torch.no_grad()
    def _write_back(self) -> None:
        assert self.problem is not None and self.state is not None
        theta, W = self.problem.unpack(self.state.pt.theta)
        named = self.problem.features.layout.unflatten(theta)
        for name, p in self.split.feature_params().items():
            p.copy_(named[name].to(p))
        self.split.set_head_weights(W)
        self._batch.weights_written()

    def step(self, x: Tensor | None = None, y: Tensor | None = None) -> StepInfo:
        """One trust-region iteration on (x, y); the model holds the accepted (θ, W)."""
        if y is None:
            raise no_closure("JointGaussNewton", "a closure" if callable(x) else
                             "step() without a batch")
        self.set_batch(x, y)
        assert self.problem is not None and self.state is not None
        self.state, info = trust_region_step(self.problem, self.state, self.solver_config)
        self._write_back()
        return info

    def zero_grad(self, set_to_none: bool = True) -> None:
        raise no_closure("JointGaussNewton", "zero_grad() (it keeps no .grad)")

    def state_dict(self) -> dict:
        """Optimiser state only: settings, α, radius, counters."""
        s = self.state
        return {"method": "JointGaussNewton", "config": self.config.to_dict(),
                "loss": self.loss.name, "alpha_w": self.alpha_w, "alpha_theta": self.alpha_theta,
                "radius": None if s is None else s.radius, "work": 0.0 if s is None else s.work,
                "iteration": 0 if s is None else s.iteration}

    def load_state_dict(self, sd: dict) -> None:
        """Restore settings and α (checked first); the next step continues from the model's
        (θ, W) (radius from the first Gauss-Newton step)."""
        if not isinstance(sd, dict) or sd.get("method") != "JointGaussNewton":
            raise ValueError("not a JointGaussNewton state dict")
        if sd.get("loss", self.loss.name) != self.loss.name:
            raise ValueError(f"the state dict was saved with loss {sd['loss']!r}, this "
                             f"optimiser uses {self.loss.name!r}")
        config = config_from_dict(JointGNConfig, sd.get("config", {}), "state_dict['config']")
        self.alpha_w = check_real("state_dict['alpha_w']", sd.get("alpha_w", self.alpha_w),
                                  low=0.0)
        self.alpha_theta = check_real("state_dict['alpha_theta']",
                                      sd.get("alpha_theta", self.alpha_theta), low=0.0)
        self.config, self.solver_config = config, config.solver()
        self.problem, self.state, self._resumed = None, None, True
        self._batch.forget()
