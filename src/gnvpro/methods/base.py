"""The method protocol every training method follows, and what methods share.

    method.set_batch(x, y)    evaluate at the model's current weights on (x, y)
    info = method.step(x, y)  one iteration on (x, y) (re-evaluates first if the batch changed);
                              the model holds the result; None when no step could be taken
    method.current()          the iterate: objective value, data loss, predictions S on the batch
    method.termination()      RUNNING, or why the method cannot go on on this batch
    method.work, .seconds, .inner_seconds   cumulative counters (work: see ModelMethod.work)
    method.step_work          work of one step when known in advance (first-order: 2), else None
    method.state_dict() / load_state_dict(sd)   optimiser state only (as in torch.optim)

One loop (gnvpro.loop.fit) drives every method: budgets, termination, records, validation,
progress, callbacks and checkpoints live there, not in the methods.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..head import HeadSplit, split_model
from ..losses import Loss, make_loss
from ..regularizer import LinearMap
from ..solver import StepInfo, Termination
from ..validate import (
    check_model,
    check_real,
    choices,
    config_from_dict,
    describe,
    in_range,
    settings_dict,
    validate_config,
)
from ..varpro import MEMORY, InnerOptions

__all__ = ["BatchIdentity", "InnerSettings", "Iterate", "Method", "ModelMethod", "no_closure",
           "same_data"]


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
    split: HeadSplit  # the model split at its affine head
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


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: Tensor) -> Tensor:
    """``t`` viewed as integers of its element size (bitwise comparison: NaN, ±0 exact)."""
    if t.is_floating_point() and t.element_size() in _BITS:
        return t.view(_BITS[t.element_size()])
    return t


def same_data(a: Tensor, b: object) -> bool:
    """Whether ``b`` holds the data of ``a``: a tensor of the same shape, dtype and device
    whose values are bitwise equal (one comparison pass; a difference usually stops it early).
    Measured on 10000 × 3072 float32 (CPU, 2 threads): docs/architecture.md."""
    return (isinstance(b, Tensor) and a.shape == b.shape and a.dtype == b.dtype
            and a.device == b.device and torch.equal(_bits(a), _bits(b)))


class BatchIdentity:
    """Whether (x, y) is still the batch a method evaluated: the same data (the same tensors,
    or other tensors holding bitwise the same values: ``x.clone()``, a full-batch DataLoader
    yielding new tensors each epoch), the remembered tensors unchanged since (no in-place
    edit), and the model's weights still the method's (nobody wrote into them)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._batch: tuple[Tensor, Tensor] | None = None
        self._versions: tuple[int | None, ...] = ()
        self._params: tuple = ()  # (id, version) of each parameter after the last write

    def remember(self, x: Tensor, y: Tensor) -> None:
        self._batch, self._versions = (x, y), (_version(x), _version(y))
        self.weights_written()

    def weights_written(self) -> None:
        """Call after the method wrote its weights into the model."""
        self._params = self._param_versions()

    def _param_versions(self) -> tuple:
        return tuple((id(p), _version(p)) for p in self.model.parameters())

    def weights_unchanged(self) -> bool:
        """Whether the model's parameters are the tensors the method last wrote, unchanged
        since (no in-place edit, none replaced): then they are finite (the method's point)."""
        return bool(self._params) and self._params == self._param_versions()

    def forget(self) -> None:
        self._batch = None

    def same(self, x: Tensor, y: Tensor) -> bool:
        """The fast path: the remembered tensors themselves; else a bitwise comparison."""
        b = self._batch
        if (b is None or self._versions != (_version(b[0]), _version(b[1]))
                or self._params != self._param_versions()):
            return False
        return (b[0] is x and b[1] is y) or (same_data(b[0], x) and same_data(b[1], y))


def no_closure(name: str, what: str) -> TypeError:
    """The error for torch.optim habits (step(closure), zero_grad()) on a gnvpro method."""
    return TypeError(f"{name} does not take {what}: it evaluates the model itself. Call "
                     f"opt.step(x, y) for one iteration, or gnvpro.fit(opt, [(x, y)], "
                     f"max_work=...) / opt.run(x, y, max_work=...) to train")


@dataclass(frozen=True)
class InnerSettings:
    """The inner solve W*(θ) (Newton-CG for cross-entropy / logistic; least squares is exact)."""

    inner_rtol: float = field(default=1e-10, metadata=in_range(low=0.0))
    inner_atol: float = field(default=1e-10, metadata=in_range(low=0.0))
    inner_max_iter: int = field(default=100, metadata=in_range(low=1))
    # inexact inner solves: also stop at ‖∇_W Φ‖ ≤ inner_forcing·min(‖g‖, α_W‖W0‖), g the
    # reduced gradient at the outer iterate, W0 the warm start (gnvpro.varpro.InnerOptions);
    # 0: exact to inner_atol / inner_rtol
    inner_forcing: float = field(default=0.0, metadata=in_range(low=0.0))
    # the objective's passes over the rows (gnvpro.varpro.ReducedObjective): row blocks, and
    # whether a point keeps each block's linearisation ("keep") or recomputes it per product
    chunks: int = field(default=1, metadata=in_range(low=1))
    chunk_memory: str = field(default="auto", metadata=choices(*MEMORY))

    def __post_init__(self) -> None:
        validate_config(self)  # every field, by its type and range (TypeError / ValueError)

    def inner(self) -> InnerOptions:
        return InnerOptions(self.inner_rtol, self.inner_atol, self.inner_max_iter,
                            self.inner_forcing)

    def to_dict(self) -> dict:
        return settings_dict(self)


class ModelMethod:
    """What every method shares: the model split at its affine head, the loss, α_W, α_θ, its
    config (of ``config_type``), the regulariser B of α_θ/2 ‖Bθ‖², the batch identity."""

    config_type: ClassVar[type]
    step_work: float | None = None
    own_work: float  # the method's own count (subclasses): passes over the batch of each step
    _work_mark: tuple[float, float] | None = None  # (fit's counter, own_work) at fit's last mark

    @property
    def work(self) -> float:
        """Work units spent: the training loop's counter (gnvpro.fit: passes over its n_samples,
        a step on a batch of b samples counts b / n_samples; the records' work_units), plus
        what ``step`` outside fit spent since (passes over its batch). Before any fit, and for
        full-batch training, it is the method's own count, ``own_work``."""
        if self._work_mark is None:
            return self.own_work
        mark, own = self._work_mark
        return mark + (self.own_work - own)

    def mark_work(self, work: float) -> None:
        """Called by gnvpro.fit: the work spent so far is ``work`` (fit's counter)."""
        self._work_mark = (work, self.own_work)

    def __repr__(self) -> str:
        """E.g. GNvpro(loss='cross_entropy', alpha_w=0.0001, alpha_theta=1e-10, head='fc',
        config=GNvproConfig(descent=PreconditionedCG(max_products=20, rtol=0.01, memory=10),
        search=StrongWolfe(c1=0.0001, c2=0.9, max_evals=25))): the settings that differ from
        the config's defaults (descent, search, optimizer always, where there is one)."""
        default = self.config_type()
        shown = {f.name: getattr(self.config, f.name) for f in fields(self.config)
                 if f.name in ("descent", "search", "optimizer")
                 or getattr(self.config, f.name) != getattr(default, f.name)}
        config = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        split = getattr(self, "split", None)
        head = f", head={split.head_name!r}" if split is not None else ""
        return (f"{type(self).__name__}(loss={getattr(self.loss, 'name', self.loss)!r}, "
                f"alpha_w={self.alpha_w!r}, alpha_theta={self.alpha_theta!r}{head}, "
                f"config={type(self.config).__name__}({config}))")

    def __init__(self, model: nn.Module, loss: str | Loss = "least_squares",
                 alpha_w: float = 1e-10, alpha_theta: float = 1e-10, head: str | None = None,
                 config: Any = None, regularizer: LinearMap | None = None) -> None:
        name = type(self).__name__
        if not isinstance(loss, str | Loss):
            raise TypeError(f"loss must be a name (least_squares, cross_entropy, logistic) or a "
                            f"gnvpro.losses.Loss, got {describe(loss)}")
        alpha_w = check_real("alpha_w", alpha_w, low=0.0)
        alpha_theta = check_real("alpha_theta", alpha_theta, low=0.0)
        if config is not None and not isinstance(config, self.config_type):
            raise TypeError(f"config must be a gnvpro.{self.config_type.__name__} or None, got "
                            f"{describe(config)}")
        if regularizer is not None and not callable(regularizer):
            raise TypeError(f"regularizer must be a callable (a linear map of the named "
                            f"parameters) or None, got {describe(regularizer)}")
        self.split: HeadSplit = split_model(model, head)
        check_model(self.split)
        self.model = model
        self.loss = make_loss(loss) if isinstance(loss, str) else loss
        if alpha_w == 0 and not self.loss.is_quadratic:
            raise ValueError(f"alpha_w must be > 0 for the {self.loss.name} loss (W* must be "
                             f"unique), got 0 ({name})")
        self.alpha_w, self.alpha_theta = alpha_w, alpha_theta
        self.config = config or self.config_type()
        self.regularizer = regularizer
        self._batch = BatchIdentity(model)

    # ---------------------------------------------------------- checkpoints
    def _settings(self) -> dict:
        """The settings part of every method's state_dict."""
        return {"method": type(self).__name__, "config": self.config.to_dict(),
                "loss": self.loss.name, "alpha_w": self.alpha_w, "alpha_theta": self.alpha_theta}

    def _check_settings(self, sd: object, required: set[str]) -> tuple[Any, float, float]:
        """What every method's load_state_dict checks first: a dict of this method's
        state_dict() (the keys ``required``) and of the same loss. Returns its config, α_W and
        α_θ, which the method adopts (as torch.optim adopts a saved param_group's settings);
        a dict without them keeps the optimiser's."""
        name = type(self).__name__
        if not isinstance(sd, dict):
            raise TypeError(f"load_state_dict expects the dict of {name}.state_dict(), got "
                            f"{describe(sd)}")
        if "model" in sd:
            raise ValueError(f"this looks like a model+optimiser checkpoint: load it with "
                             f"gnvpro.load_checkpoint(path, model, opt), or pass sd['optimizer']"
                             f" to {name}.load_state_dict")
        missing = required - set(sd)
        if missing:
            raise ValueError(f"not a {name} state dict: missing {sorted(missing)}")
        if sd.get("method", name) != name:
            raise ValueError(f"the state dict is of {sd['method']}, not {name}")
        if "loss" in sd and sd["loss"] != self.loss.name:
            raise ValueError(f"the state dict was saved with loss {sd['loss']!r} but this "
                             f"optimiser uses {self.loss.name!r}: create {name}(model, "
                             f"loss={sd['loss']!r}) to load it")
        alpha_w = check_real("state_dict['alpha_w']", sd.get("alpha_w", self.alpha_w), low=0.0)
        alpha_theta = check_real("state_dict['alpha_theta']",
                                 sd.get("alpha_theta", self.alpha_theta), low=0.0)
        if alpha_w == 0 and not self.loss.is_quadratic:
            raise ValueError(f"state_dict['alpha_w'] must be > 0 for the {self.loss.name} loss")
        config = self.config
        if "config" in sd:
            config = config_from_dict(self.config_type, sd["config"], "state_dict['config']")
        return config, alpha_w, alpha_theta

    def theta(self) -> Tensor:
        """θ as a flat float64 vector (the model's current feature weights)."""
        params = self.split.feature_params()
        return torch.cat([p.detach().reshape(-1).to(torch.float64) for p in params.values()])

    def _check_step(self, x: Tensor | Callable | None, y: Tensor | None) -> None:
        if y is None:
            raise no_closure(type(self).__name__, "a closure" if callable(x) else
                             "step() without a batch")

    def zero_grad(self, set_to_none: bool = True) -> None:
        raise no_closure(type(self).__name__, "zero_grad() (it keeps no .grad)")
