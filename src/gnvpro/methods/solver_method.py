"""Methods whose iterate is a gnvpro.solver SolverState on a Problem (Φ_red(θ) for variable
projection, Φ(θ, W) for joint Gauss-Newton): counters, the iterate, termination, one step, and
writing the iterate's (θ, W) back into the model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..solver import SolverState, StepInfo, Termination, check_termination
from ..threads import auto_threads, intra_op_threads
from .base import Iterate, ModelMethod

__all__ = ["SolverMethod"]


class SolverMethod(ModelMethod):
    """Subclasses give set_batch (building ``self.problem`` and ``self.state``),
    ``_outer_step(state)`` and ``_theta_W(point)``."""

    problem: Any = None
    state: SolverState | None = None

    # ------------------------------------------------------------------ hooks
    def set_batch(self, x: Tensor, y: Tensor) -> None:
        raise NotImplementedError

    def _outer_step(self, state: SolverState) -> tuple[SolverState, StepInfo | None]:
        raise NotImplementedError

    def _theta_W(self, pt: Any) -> tuple[Tensor, Tensor]:
        """θ (flat) and W = [W̃, b] of a point."""
        raise NotImplementedError

    # ------------------------------------------------------------------ state
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
