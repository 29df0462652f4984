"""The one training loop: every method (gnvpro.methods) is driven by ``fit``.

    hist = fit(method, batches, max_work=200, val=(x_val, y_val))

``batches`` is a sequence of (x, y): one batch is full-batch training (steps until a budget or
the method's own termination); several batches are a schedule of ``epochs`` passes in which the
method takes ``steps_per_batch`` steps on each batch in turn (the paper's stochastic scheme on
fixed sub-batches, gnvpro.batches.fixed_batches). Work units stay passes over the ``n_samples``
training samples: the work of a step on a batch of size b is scaled by b / n_samples.

Budgets (of this call): max_iter steps, max_work work units, max_seconds of the method's own
seconds. A step is not started once the work spent reaches max_work, nor when its known cost
(method.step_work) would exceed it. Termination is one enum (gnvpro.solver.Termination): a
budget, the method's own reason (gradient tolerance, collapsed trust region, failed line search;
with several batches the method moves on to the next batch instead and the batch is listed in
History.batch_stops), a non-finite objective, the callback, or the end of the schedule.

Every record is a StepInfo: work_units, seconds and inner_seconds cumulative, loss and data_loss
of the current iterate, metrics["train"] on the current batch (from the predictions at hand),
metrics["val"] on ``val``. Metrics, callbacks and checkpoints are not counted in seconds.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence, Sized
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .methods.base import Method
from .metrics import prediction_metrics
from .progress import bar
from .solver import StepInfo, Termination
from .validate import check_batch, check_real, describe

__all__ = ["History", "KeepBest", "Position", "fit"]

Callback = Callable[[StepInfo], bool | None]


@dataclass
class Position:
    """Where a schedule stands after a record: the epoch (from 1), the batch, the steps taken on
    it, and the loop's work counter (work units of the whole run)."""

    epoch: int = 1
    batch: int = 0
    k: int = 0
    work: float = 0.0


@dataclass
class History:
    """Records of a run and why it stopped (batch_stops: batches a method could not go on;
    position: where the schedule stands, for checkpoints)."""

    records: list[StepInfo]
    termination: Termination
    batch_stops: list[dict] = field(default_factory=list)
    position: Position = field(default_factory=Position)

    @property
    def final(self) -> StepInfo | None:
        return self.records[-1] if self.records else None


class KeepBest:
    """A callback that remembers the model of the best validation metric (highest accuracy,
    or lowest loss for regression; ties keep the earlier) and marks records best_val."""

    def __init__(self, model: nn.Module, classification: bool) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"KeepBest(model=...) must be the nn.Module being trained, got "
                            f"{describe(model)}")
        if not isinstance(classification, bool):
            raise TypeError(f"KeepBest(classification=...) must be True (accuracy) or False "
                            f"(loss), got {describe(classification)}")
        self.model, self.classification = model, classification
        self.score, self.state = -math.inf, None

    def __call__(self, rec: StepInfo) -> None:
        val = rec.metrics.get("val")
        if val is None:
            raise ValueError("KeepBest needs validation data: pass val=(x_val, y_val) to fit")
        score = float(val["accuracy"]) if self.classification else -float(val["loss"])
        rec.extra["best_val"] = score > self.score
        if score > self.score:
            self.score, self.state = score, copy.deepcopy(self.model.state_dict())

    def restore(self) -> None:
        """Load the best model seen (nothing if no record was seen)."""
        if self.state is not None:
            self.model.load_state_dict(self.state)


def _check_budget(max_work: float | None, max_iter: int | None, max_seconds: float | None,
                  unbounded: bool) -> tuple:
    if max_work is not None:
        max_work = check_real("max_work", max_work, low=0.0, finite=False)
    if max_iter is not None:
        max_iter = check_real("max_iter", max_iter, integer=True, low=0)
    if max_seconds is not None:
        max_seconds = check_real("max_seconds", max_seconds, low=0.0)
    if unbounded and (max_work is None or max_work == math.inf) and max_iter is None \
            and max_seconds is None:
        raise ValueError("fit() needs a budget: give max_work or max_iter (or max_seconds; "
                         "the gradient tolerance alone rarely stops a run)")
    return max_work, max_iter, max_seconds


MAX_BATCHES = 10**6
_METHOD_API = ("set_batch", "step", "current", "termination", "state_dict", "load_state_dict")


def _check_method(method: object) -> None:
    """``method`` follows the protocol of gnvpro.methods.base.Method."""
    missing = [a for a in _METHOD_API if not callable(getattr(method, a, None))]
    missing += [a for a in ("model", "split", "loss", "work", "seconds", "inner_seconds")
                if not hasattr(method, a)]
    if missing:
        raise TypeError(f"method must be a gnvpro method (GNvpro, LBFGSVarPro, "
                        f"JointGaussNewton, FirstOrder or one with their protocol), got "
                        f"{describe(method)} without {', '.join(missing)}")


def _check_batches(method: Method, batches: object) -> list[tuple[Tensor, Tensor]]:
    """The batches as a list of (x, y), each checked for the model (types, shapes, dtype,
    device, widths, finite values, targets) before anything is trained."""
    if isinstance(batches, tuple) and len(batches) == 2 and isinstance(batches[0], Tensor):
        raise TypeError("batches must be a sequence of (x, y) pairs: pass [(x, y)] for "
                        "full-batch training")
    if isinstance(batches, Iterator) or not isinstance(batches, Sized) or \
            not hasattr(batches, "__getitem__") or isinstance(batches, str | bytes | Tensor):
        raise TypeError(f"batches must be a sequence of (x, y) pairs with a length (a list or "
                        f"tuple; fit reads it once per epoch), got {describe(batches)}: pass "
                        "list(...) of a finite iterable")
    if len(batches) > MAX_BATCHES:
        raise ValueError(f"batches has {len(batches)} batches, more than {MAX_BATCHES}: use "
                         "larger batches (gnvpro.batches.fixed_batches) or several fit calls")
    out = list(batches)
    if not out:
        raise ValueError("batches is empty: give at least one (x, y) batch")
    seen: set[tuple[int, int]] = set()
    for i, b in enumerate(out):
        if not (isinstance(b, tuple | list) and len(b) == 2):
            raise TypeError(f"batches[{i}] must be a pair (x, y), got {describe(b)}")
        if (id(b[0]), id(b[1])) in seen:  # the same tensors again: checked already
            continue
        seen.add((id(b[0]), id(b[1])))
        where = "" if len(out) == 1 else f"batches[{i}]: "
        check_batch(method.split, b[0], b[1], f"{where}x", f"{where}y")
        if i and b[0].shape[1:] != out[0][0].shape[1:]:
            raise ValueError(f"batches[{i}]: x has samples of shape {tuple(b[0].shape[1:])} but "
                             f"batches[0] has {tuple(out[0][0].shape[1:])}: they must match")
        try:
            method.loss.prepare_targets(b[1], method.split.n_outputs)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{where}y: {e}") from None
    return [tuple(b) for b in out]  # type: ignore[misc]


def _check_hooks(callback: object, callbacks: object, checkpoint: object,
                 checkpoint_every: object) -> tuple[list[Callback], float]:
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {describe(callback)}")
    if not isinstance(callbacks, list | tuple):
        raise TypeError(f"callbacks must be a list of callables, got {describe(callbacks)}")
    for i, cb in enumerate(callbacks):
        if not callable(cb):
            raise TypeError(f"callbacks[{i}] must be callable (record -> bool | None), got "
                            f"{describe(cb)}")
    if checkpoint is not None and not callable(checkpoint):
        raise TypeError(f"checkpoint must be callable (history -> None) or None, got "
                        f"{describe(checkpoint)}")
    every = check_real("checkpoint_every", checkpoint_every, low=0.0, finite=False)
    return [*callbacks, *([callback] if callback is not None else [])], every


def _check_start(start: object, n_batches: int, epochs: int) -> Position:
    if start is None:
        return Position()
    if not isinstance(start, Position):
        raise TypeError(f"start must be a gnvpro.loop.Position or None, got {describe(start)}")
    check_real("start.epoch", start.epoch, integer=True, low=1, high=epochs)
    check_real("start.batch", start.batch, integer=True, low=0, high=n_batches - 1)
    check_real("start.k", start.k, integer=True, low=0)
    check_real("start.work", start.work, low=0.0)
    return start


def fit(
    method: Method,
    batches: Sequence[tuple[Tensor, Tensor]],
    *,
    n_samples: int | None = None,
    epochs: int = 1,
    steps_per_batch: int | None = None,
    max_work: float | None = None,
    max_iter: int | None = None,
    max_seconds: float | None = None,
    val: tuple[Tensor, Tensor] | None = None,
    callback: Callback | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = False,
    record_start: bool = False,
    checkpoint: Callable[[History], None] | None = None,
    checkpoint_every: float = 300.0,
    start: Position | None = None,
) -> History:
    """Train ``method``'s model on ``batches`` (module docstring); the model holds the result.

    record_start: record 0 describes the starting point (after the first evaluation).
    checkpoint(history) is called at most every ``checkpoint_every`` wall seconds, after a
    record, and after the record at which a callback stops the run (the caller saves the
    model, method.state_dict(), the records and history.position). start: continue a schedule
    from a checkpoint's position (the method restored by load_state_dict; the budgets are those
    left). Everything is checked before the first step: the method, every batch (errors name
    batches[i]), the budgets (one is needed unless steps_per_batch bounds the schedule), the
    callbacks and the checkpoint hook."""
    _check_method(method)
    batches = _check_batches(method, batches)
    epochs = check_real("epochs", epochs, integer=True, low=1)
    single = len(batches) == 1 and epochs == 1
    if steps_per_batch is not None:
        steps_per_batch = check_real("steps_per_batch", steps_per_batch, integer=True, low=1)
    max_work, max_iter, max_seconds = _check_budget(
        max_work, max_iter, max_seconds, unbounded=steps_per_batch is None)
    largest = max(len(x) for x, _ in batches)
    if n_samples is None:
        n_samples = sum(len(x) for x, _ in batches) if not single else len(batches[0][0])
    n_samples = check_real("n_samples", n_samples, integer=True, low=1)
    if n_samples < largest:
        raise ValueError(f"n_samples ({n_samples}) is smaller than a batch ({largest} samples): "
                         "give the number of training samples (the work of a step on a batch "
                         "of b samples counts b / n_samples)")
    callbacks, checkpoint_every = _check_hooks(callback, callbacks, checkpoint, checkpoint_every)
    if val is not None:
        _check_val(method, batches[0][0], val)
    start = _check_start(start, len(batches), epochs)
    x0, y0 = batches[start.batch]
    work = method.work
    method.set_batch(x0, y0)
    work += (method.work - work) * len(x0) / n_samples
    if start.work:
        work = start.work
    start_work, start_seconds = work, method.seconds
    records: list[StepInfo] = []
    hist = History(records, Termination.RUNNING, position=start)
    last_checkpoint = time.perf_counter()

    def record(info: StepInfo, y: Tensor, **extra: object) -> StepInfo:
        it = method.current()
        info.loss, info.data_loss = it.value, it.data_loss
        info.work_units, info.seconds = work, method.seconds
        info.inner_seconds = method.inner_seconds
        info.metrics["train"] = prediction_metrics(method.loss, it.S, y, it.S.shape[1])
        if val is not None:
            info.metrics["val"] = _val_metrics(method, val)
        info.extra.update(extra)
        records.append(info)
        return info

    steps, term = 0, Termination.RUNNING
    if record_start:  # callbacks see it too (KeepBest counts the start)
        it = method.current()
        rec = record(StepInfo(iteration=0, loss=it.value, data_loss=it.data_loss,
                              grad_norm=it.grad_norm),
                     y0, **({} if single else {"epoch": 0, "batch": 0, "batch_size": len(x0)}))
        if any([cb(rec) for cb in callbacks]):
            hist.termination = Termination.STOPPED
            return hist

    total = max_work if max_work is not None and max_work < math.inf else (
        max_iter if max_iter is not None else (
            None if steps_per_batch is None else epochs * len(batches) * steps_per_batch))
    pbar = bar(progress, total, "WU" if total == max_work else "it", leave=False)
    try:
        for epoch, b, k in _schedule(len(batches), epochs, start):
            x, y = batches[b]
            if not single:
                before = method.work
                method.set_batch(x, y)
                work += (method.work - before) * len(x) / n_samples
            while steps_per_batch is None or k < steps_per_batch:
                term = _budget(method, steps, work - start_work,
                               method.seconds - start_seconds, max_iter, max_work,
                               max_seconds)
                if term is not Termination.RUNNING:
                    break
                own = method.termination()
                if own is not Termination.RUNNING:
                    if single:
                        term = own
                    else:
                        hist.batch_stops.append({"epoch": epoch, "batch": b,
                                                 "reason": own.value})
                    break
                before = method.work
                info = method.step(x, y)
                work += (method.work - before) * len(x) / n_samples
                if info is None:  # no step possible here: termination() says why
                    continue
                k += 1
                steps += 1
                extra = {} if single else {"epoch": epoch, "batch": b, "batch_size": len(x)}
                rec = record(info, y, **extra)
                hist.position = Position(epoch, b, k, work)
                if pbar is not None:
                    pbar.update((work - start_work - pbar.n) if total == max_work else 1)
                    pbar.set_postfix(loss=f"{rec.loss:.4g}")
                stop = [cb(rec) for cb in callbacks]
                if not math.isfinite(rec.loss):
                    term = Termination.DIVERGED
                elif any(stop):
                    term = Termination.STOPPED
                if checkpoint is not None and (term is Termination.STOPPED or
                                               time.perf_counter() - last_checkpoint
                                               >= checkpoint_every):
                    checkpoint(hist)
                    last_checkpoint = time.perf_counter()
                if term is not Termination.RUNNING:
                    break
            if term is not Termination.RUNNING:
                break
        if term is Termination.RUNNING:
            term = Termination.EPOCHS_DONE
    finally:
        if pbar is not None:
            pbar.close()
    hist.termination = term
    return hist


def _schedule(n_batches: int, epochs: int, start: Position) -> Iterator[tuple[int, int, int]]:
    """(epoch, batch, steps already taken on it) from the start position to the end."""
    for epoch in range(start.epoch, epochs + 1):
        for b in range(n_batches):
            if (epoch, b) >= (start.epoch, start.batch):
                yield epoch, b, start.k if (epoch, b) == (start.epoch, start.batch) else 0


def _budget(method: Method, steps: int, work: float, seconds: float, max_iter: int | None,
            max_work: float | None, max_seconds: float | None) -> Termination:
    if max_iter is not None and steps >= max_iter:
        return Termination.MAX_ITER
    if max_work is not None:
        if work >= max_work:
            return Termination.MAX_WORK
        if method.step_work is not None and work + method.step_work > max_work:
            return Termination.MAX_WORK
    if max_seconds is not None and seconds >= max_seconds:
        return Termination.MAX_SECONDS
    return Termination.RUNNING


def _val_metrics(method: Method, val: tuple[Tensor, Tensor]) -> dict:
    with torch.no_grad():
        S = method.model(val[0])
    return prediction_metrics(method.loss, S, val[1], S.shape[1])


def _check_val(method: Method, x: Tensor, val: object) -> None:
    if not isinstance(val, tuple | list) or len(val) != 2:
        raise TypeError(f"val must be a pair (x_val, y_val) of tensors, got {describe(val)}")
    xv, yv = val
    check_batch(method.split, xv, yv, "val[0] (x_val)", "val[1] (y_val)")
    if isinstance(x, Tensor) and xv.shape[1:] != x.shape[1:]:
        raise ValueError(f"val[0] (x_val) has samples of shape {tuple(xv.shape[1:])} but x "
                         f"has {tuple(x.shape[1:])}: they must match")
    try:
        method.loss.prepare_targets(yv, method.split.n_outputs)
    except ValueError as e:
        raise ValueError(f"val[1] (y_val): {e}") from None
