"""Joint Gauss-Newton ("GN"): the trust-region solver on z = (θ, vec W) without variable
projection (gnvpro.joint.JointProblem: coupled Gauss-Newton matrix, or the reference's
block-diagonal one), W starting at W*(θ0) on the first batch; later batches continue from the
current (θ, W) and carry the radius over (``carry``, methods/solver_method.py). Work units as
gnvpro.solver counts them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from ..autodiff import JVP_MODES
from ..head import check_head_is_last
from ..joint import JointPoint, JointProblem
from ..solver import SolverConfig, SolverState, StepInfo, initial_state, trust_region_step
from ..validate import choices
from ..varpro import ReducedObjective, WarmStart
from .base import InnerSettings
from .solver_method import SolverMethod

__all__ = ["JointGaussNewton", "JointGNConfig"]


@dataclass(frozen=True)
class JointGNConfig(SolverConfig, InnerSettings):
    """Settings of joint Gauss-Newton: the outer solver's (defaults: the paper's trust region),
    the W*(θ0) solve's, and these."""

    coupled: bool = True  # False: the reference's block-diagonal Gauss-Newton matrix
    jvp_mode: str = field(default="auto", metadata=choices(*JVP_MODES))


class JointGaussNewton(SolverMethod):
    """Trust-region Gauss-Newton on (θ, W) of a model whose last layer is affine."""

    config_type = JointGNConfig
    default_carry = ("radius",)

    def _theta_W(self, pt: JointPoint) -> tuple[Tensor, Tensor]:
        return self.problem.unpack(pt.theta)

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
        if old is not None:
            z = old.pt.theta
        elif self._resume is not None:
            z = problem.pack(self.theta(), self.split.head_weights().to(torch.float64))
        else:  # θ0 with W*(θ0) on this batch
            obj = ReducedObjective(self.split, self.loss, x, y, self.alpha_w, self.alpha_theta,
                                   B=self.regularizer, inner=c.inner())
            pt = obj.evaluate(self.theta(),
                              WarmStart(self.split.head_weights().to(torch.float64)))
            inner_seconds = pt.inner.seconds
            z = problem.pack(pt.theta, pt.W)
        setup = time.perf_counter() - t0
        fresh = initial_state(problem, z)
        fresh = replace(fresh, seconds=fresh.seconds + setup,
                        inner_seconds=fresh.inner_seconds + inner_seconds)
        if old is not None:  # a new batch: the counters and self.carry (the radius) carry over
            fresh = self._carry(old, fresh)
        elif self._resume is not None:  # after load_state_dict: from the model's (θ, W)
            fresh = self._restore(fresh)
        self.problem, self.state = problem, fresh
        self._batch.remember(x, y)
        self._write_back()

    def _outer_step(self, state: SolverState) -> tuple[SolverState, StepInfo]:
        return trust_region_step(self.problem, state, self.config)
