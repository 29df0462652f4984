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
from ..solver import SavedPoint, SolverConfig, SolverState
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

    def _n_theta(self) -> int:
        """z = (θ, vec W): the feature weights and the head's."""
        return super()._n_theta() + self.split.head_weights().numel()

    def set_batch(self, x: Tensor, y: Tensor) -> None:
        """Φ(θ, W) and its gradient on (x, y) at the current (θ, W) — on the first batch at
        (θ0, W*(θ0)) (2 work units)."""
        if self._batch.same(x, y):
            return
        c = self.config
        problem = JointProblem(self.split, self.loss, x, y, self.alpha_w, self.alpha_theta,
                               B=self.regularizer, coupled=c.coupled, jvp_mode=c.jvp_mode,
                               reducer=self.reducer)
        check_head_is_last(self.split, x[: min(len(x), 16)])
        setup = [0.0, 0.0]  # seconds and inner seconds of the W*(θ0) solve

        def start(old: SolverState | None) -> tuple[Tensor, None]:
            """The last (θ, W); after load_state_dict when the model no longer holds them, the
            model's; on the first batch (θ0, W*(θ0))."""
            if old is not None and old.pt is not None and (
                    not isinstance(old.pt, SavedPoint) or self._model_holds(old.pt)):
                return old.pt.theta, None
            if old is not None:
                return problem.pack(self.theta(), self.split.head_weights()), None
            t0 = time.perf_counter()
            obj = ReducedObjective(self.split, self.loss, x, y, self.alpha_w, self.alpha_theta,
                                   B=self.regularizer, inner=c.inner(), reducer=self.reducer)
            pt = obj.evaluate(self.theta(),
                              WarmStart(self.split.head_weights().to(torch.float64)))
            setup[:] = [time.perf_counter() - t0, pt.inner.seconds]
            return problem.pack(pt.theta, pt.W), None

        fresh = self._new_state(problem, start)
        fresh = replace(fresh, seconds=fresh.seconds + setup[0],
                        inner_seconds=fresh.inner_seconds + setup[1])
        self.problem, self.state = problem, fresh
        self._batch.remember(x, y)
        self._write_back()
