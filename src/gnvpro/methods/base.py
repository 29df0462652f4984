"""The method protocol every training method follows, and what methods share.

    method.set_batch(x, y)    evaluate at the model's current weights on (x, y)
    info = method.step(x, y)  one iteration on (x, y) (re-evaluates first if the batch changed);
                              the model holds the result; None when no step could be taken
    method.current()          the iterate: objective value, data loss, predictions S on the batch
    method.termination()      RUNNING, or why the method cannot go on on this batch
    method.work, .seconds, .inner_seconds   cumulative counters (the method's own counting)
    method.step_work          work of one step when known in advance (first-order: 2), else None
    method.state_dict() / load_state_dict(sd)   optimiser state only (as in torch.optim)

One loop (gnvpro.loop.fit) drives every method: budgets, termination, records, validation,
progress, callbacks and checkpoints live there, not in the methods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from ..losses import Loss
from ..solver import StepInfo, Termination

__all__ = ["BatchIdentity", "Iterate", "Method", "no_closure"]


@dataclass
class Iterate:
    """The current iterate on the current batch: Φ (with regularisers), the data loss L, the
    predictions S = f(x; θ, W) (rows are the batch's samples) and ‖∇Φ‖ (NaN if not at hand)."""

    value: float
    data_loss: float
    S: Tensor
    grad_norm: float = math.nan


@runtime_checkable
class Method(Protocol):
    model: nn.Module
    loss: Loss
    work: float
    seconds: float
    inner_seconds: float
    step_work: float | None

    def set_batch(self, x: Tensor, y: Tensor) -> None: ...
    def step(self, x: Tensor, y: Tensor) -> StepInfo | None: ...
    def current(self) -> Iterate: ...
    def termination(self) -> Termination: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, sd: dict) -> None: ...


def _version(t: object) -> int | None:
    """The in-place version counter of a tensor (None for inference tensors, which have none)."""
    try:
        return t._version  # type: ignore[attr-defined]
    except (RuntimeError, AttributeError):
        return None


class BatchIdentity:
    """Whether (x, y) is still the batch a method evaluated: the same tensors, unchanged since (no
    in-place edit), and the model's weights still the method's (nobody wrote into them)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._batch: tuple[Tensor, Tensor] | None = None
        self._versions: tuple[int | None, ...] = ()
        self._params: tuple[int | None, ...] = ()

    def remember(self, x: Tensor, y: Tensor) -> None:
        self._batch, self._versions = (x, y), (_version(x), _version(y))
        self.weights_written()

    def weights_written(self) -> None:
        """Call after the method wrote its weights into the model."""
        self._params = tuple(_version(p) for p in self.model.parameters())

    def forget(self) -> None:
        self._batch = None

    def same(self, x: Tensor, y: Tensor) -> bool:
        b = self._batch
        return (b is not None and b[0] is x and b[1] is y
                and self._versions == (_version(x), _version(y))
                and self._params == tuple(_version(p) for p in self.model.parameters()))


def no_closure(name: str, what: str) -> TypeError:
    """The error for torch.optim habits (step(closure), zero_grad()) on a gnvpro method."""
    return TypeError(f"{name} does not take {what}: it evaluates the model itself. Call "
                     f"opt.step(x, y) for one iteration, or gnvpro.fit(opt, [(x, y)], "
                     f"max_work=...) / opt.run(x, y, max_work=...) to train")
