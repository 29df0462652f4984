"""What every variable-projection optimiser shares (GNvpro, L-BFGS-VarPro): the model split at
its affine head, Φ_red(θ) = Φ(θ, W*(θ)) on the current batch, the solver state, write-back.

    opt.set_batch(x, y)   Φ_red, W*(θ) and ∇Φ_red at the model's θ on (x, y) (2 work units)
    opt.step(x, y)        one outer iteration (the subclass's outer solver); the model holds
                          the accepted θ and the solved head W* = [W̃, b]
    opt.run(x, y, ...)    gnvpro.loop.fit on the one batch (x, y)

A new batch re-evaluates at the current θ and carries the counters (and the trust-region radius)
over: step() on a sequence of batches is the paper's stochastic variant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..head import check_head_is_last
from ..metrics import predict, prediction_metrics
from ..solver import SolverState, StepInfo
from ..validate import check_batch, check_model
from ..varpro import ReducedObjective, WarmStart
from .solver_method import SolverMethod

__all__ = ["VarProOptimizer"]


class VarProOptimizer(SolverMethod):
    """Base of the variable-projection optimisers (the problem is Φ_red on the current batch);
    subclasses give ``config_type``, ``_objective_options()`` and ``_outer_step(state)``."""

    @property
    def objective(self) -> ReducedObjective | None:
        """Φ_red on the current batch."""
        return self.problem

    def _objective_options(self) -> dict:
        c = self.config
        return {"inner": c.inner(), "chunks": c.chunks, "memory": c.chunk_memory}

    def _theta_W(self, pt) -> tuple[Tensor, Tensor]:
        return pt.theta, pt.W

    def set_batch(self, x: Tensor, y: Tensor) -> None:
        """Evaluate Φ_red, W* and ∇Φ_red at the current θ on (x, y) (2 work units; nothing
        if (x, y) is already the batch)."""
        # the model may have changed since the last call; its weights did not if they are
        # still the ones the last step wrote (then the scan for NaN/Inf is skipped)
        check_model(self.split, finite=self._batch.weights_unchanged())
        if self._batch.same(x, y):
            return
        options = self._objective_options()
        if isinstance(options.get("chunks"), int):  # never more blocks than rows
            rows = x.shape[0] if isinstance(x, Tensor) and x.ndim else 1  # checked below
            options["chunks"] = min(options["chunks"], max(rows, 1))
        objective = ReducedObjective(  # checks the batch (targets.batch_targets)
            self.split, self.loss, x, y, self.alpha_w, self.alpha_theta, B=self.regularizer,
            reducer=self.reducer, **options,
        )
        check_head_is_last(self.split, x[: min(len(x), 16)])

        def start(old: SolverState | None) -> tuple[Tensor, Any]:
            """The model's θ; the inner solve warm-started from the last point's W (else from
            the model's head)."""
            pt = None if old is None else old.pt
            if pt is not None and pt.W.shape[0] == self.split.n_outputs:
                return self.theta(), pt
            return self.theta(), WarmStart(self.split.head_weights().to(torch.float64))

        try:
            fresh = self._new_state(objective, start)
        except (torch.linalg.LinAlgError, ArithmeticError) as e:
            raise ValueError(f"the starting point cannot be evaluated ({type(e).__name__}: {e}):"
                             " the data or the weights are badly scaled; standardise x and y"
                             ) from e
        # commit only now: a bad batch raises above and leaves the optimiser as it was
        self.problem, self.state = objective, fresh
        self._batch.remember(x, y)
        self._write_back()

    # ------------------------------------------------------------------- API
    def evaluate(self, x: Tensor, y: Tensor) -> dict:
        """Metrics of the current model on (x, y) (loss, relative error or accuracy)."""
        check_batch(self.split, x, y)
        check_model(self.split)
        S = predict(self.model, x)  # in blocks of rows, without a graph
        return prediction_metrics(self.loss, S, y, self.split.n_outputs)

    def run(self, x: Tensor, y: Tensor, max_work: float | None = None,
            max_iter: int | None = None, val: tuple[Tensor, Tensor] | None = None,
            max_seconds: float | None = None,
            callback: Callable[[StepInfo], bool | None] | None = None,
            progress: bool = False):
        """gnvpro.fit on the one batch (x, y): until a gradient tolerance, max_iter, max_work
        (work units of this call) or max_seconds (the optimiser's own seconds) is reached.
        callback(record) may return True to stop. Validation metrics in record.metrics["val"]."""
        from ..loop import fit

        return fit(self, [(x, y)], max_work=max_work, max_iter=max_iter, val=val,
                   max_seconds=max_seconds, callback=callback, progress=progress)
