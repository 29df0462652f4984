"""The one training loop: every method (gnvpro.methods) is driven by ``fit``.

    hist = fit(method, [(x, y)], max_work=200, val=(x_val, y_val))     # full batch
    hist = fit(method, loader, epochs=3)        # a DataLoader: one step per batch, 3 passes

``batches`` holds (x, y) pairs and has a length: a list or tuple (checked whole before the first
step and indexed each epoch), or a re-iterable such as a torch DataLoader (iterated afresh each
epoch, so a shuffling loader gives a new order per epoch; each batch is checked when drawn,
before the step on it). One-shot iterators and generators are refused. One batch is full-batch
training (steps until a budget or the method's own termination); several batches are a schedule
of ``epochs`` passes in which the method takes ``steps_per_batch`` steps (default 1) on each
batch in turn (the paper's stochastic scheme on fixed sub-batches, gnvpro.batches.fixed_batches,
with steps_per_batch > 1). A budget or a finite schedule is required.

Work units are the loop's: passes over the ``n_samples`` training samples, the work of a step on
a batch of size b scaled by b / n_samples (records' work_units, History.work). The loop marks
its counter on the method, so ``method.work`` equals History.work after fit; the method's own,
unscaled count (passes over the batch at hand) is ``method.own_work``.

Budgets (of this call): max_iter steps, max_work work units, max_seconds of the method's own
seconds (with a data-parallel reducer: as soon as any process's clock says so, and likewise the
checkpoint timer, so every process stops and checkpoints after the same step). A step is not
started once the work spent reaches max_work, nor when its known cost (method.step_work) would
exceed it. Termination is one enum (gnvpro.solver.Termination): a
budget, the method's own reason (gradient tolerance, collapsed trust region, failed line search;
with several batches the method moves on to the next batch instead and the batch is listed in
History.batch_stops), a non-finite objective, the callback, or the end of the schedule.

Every record is a StepInfo: work_units, seconds and inner_seconds cumulative, loss and data_loss
of the current iterate, metrics["train"] on the current batch (from the predictions at hand;
with a data-parallel reducer on every process's rows, gathered in process order),
metrics["val"] on ``val`` (records whose iteration is a multiple of ``val_every``; the others
carry extra["val_skipped"]). Metrics, callbacks and checkpoints are not counted in seconds.
The logger "gnvpro" writes one INFO line per record when enabled.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from .batches import Batches
from .methods.base import Method
from .metrics import predict, prediction_metrics
from .progress import bar
from .solver import StepInfo, Termination
from .validate import check_batch, check_real, describe

log = logging.getLogger("gnvpro")  # INFO: one line per record (logging.basicConfig(level=INFO))

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
    work: float = 0.0  # the loop's work counter now (= method.work after fit)

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
        if val is None and rec.extra.get("val_skipped"):  # fit(val_every=k): not validated
            return
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
    batches: Sequence[tuple[Tensor, Tensor]] | Iterable[tuple[Tensor, Tensor]],
    *,
    n_samples: int | None = None,
    epochs: int = 1,
    steps_per_batch: int | None = None,
    max_work: float | None = None,
    max_iter: int | None = None,
    max_seconds: float | None = None,
    val: tuple[Tensor, Tensor] | None = None,
    val_every: int = 1,
    callback: Callback | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = False,
    record_start: bool = False,
    checkpoint: Callable[[History], None] | None = None,
    checkpoint_every: float = 300.0,
    start: Position | None = None,
) -> History:
    """Train ``method``'s model on ``batches``; the model holds the result (module docstring).

    Parameters
    ----------
    method : Method
        A gnvpro method (GNvpro, LBFGSVarPro, JointGaussNewton, FirstOrder).
    batches : sequence or re-iterable of (x, y)
        A list / tuple of (x, y), or a re-iterable with a length (a DataLoader), read afresh
        each epoch. Every batch of a sequence is checked before the first step (errors name
        batches[i]); a loader's batches when drawn (batches[i] of epoch e).
    n_samples : int, optional
        The training samples work units count passes over (default: the batches' sizes
        summed; a DataLoader's dataset length).
    epochs, steps_per_batch : int
        The schedule: ``epochs`` passes over the batches, ``steps_per_batch`` steps on each
        (default 1 with several batches; one batch: until a budget).
    max_work, max_iter, max_seconds : float, int, float, optional
        Budgets (work units of this call, outer iterations, the method's seconds); one is
        needed unless the schedule is finite.
    val : (x, y), optional
        Validation data, metrics in ``record.metrics["val"]`` of the records whose iteration
        is a multiple of ``val_every`` (default 1: every record).
    callback, callbacks : callable(record) -> bool or None
        Called after each record; True stops the run.
    progress : bool
        A progress bar (tqdm.auto: terminals and notebooks).
    record_start : bool
        Record 0 describes the starting point (after the first evaluation).
    checkpoint : callable(history), optional
        Called at most every ``checkpoint_every`` wall seconds, after a record, and after the
        record at which a callback stops the run (the caller saves the model,
        method.state_dict(), the records and history.position).
    start : Position, optional
        Continue a schedule from a checkpoint's position (the method restored by
        load_state_dict; the budgets are those left).

    Returns
    -------
    History
        The records (one StepInfo per outer iteration: Φ, data loss, ‖∇Φ‖, step, work units,
        seconds, metrics), the Termination (a code with a message), ``History.work`` the loop's
        work counter (equal to method.work afterwards) and the schedule position.

    Notes
    -----
    Work units are passes over the n_samples training samples: a step on a batch of b samples
    that costs w passes over that batch counts w·b/n_samples (the paper's convention:
    objective and gradient 2, each Gauss-Newton product 2, each trial value 1).
    """
    _check_method(method)
    data = Batches(method, batches)
    epochs = check_real("epochs", epochs, integer=True, low=1)
    single = data.n == 1 and epochs == 1
    if steps_per_batch is not None:
        steps_per_batch = check_real("steps_per_batch", steps_per_batch, integer=True, low=1)
    elif data.n > 1:
        steps_per_batch = 1
    max_work, max_iter, max_seconds = _check_budget(
        max_work, max_iter, max_seconds, unbounded=steps_per_batch is None)
    val_every = check_real("val_every", val_every, integer=True, low=1)
    callbacks, checkpoint_every = _check_hooks(callback, callbacks, checkpoint, checkpoint_every)
    if val is None and any(isinstance(cb, KeepBest) for cb in callbacks):
        raise ValueError("KeepBest needs validation data: pass val=(x_val, y_val) to fit")
    start = _check_start(start, data.n, epochs)
    draws = _draws(data, epochs, start)
    first = next(draws, None)
    if first is None:
        raise ValueError("batches is empty: the loader gave no (x, y) batch")
    n_samples = _check_n_samples(data, n_samples, single, first[3])
    if val is not None:
        _check_val(method, first[3], val)
    _, _, _, x0, y0 = first
    work = method.work
    before = _own_work(method)
    method.set_batch(x0, y0)
    work += (_own_work(method) - before) * len(x0) / n_samples
    if start.work:
        work = start.work
    _mark_work(method, work)
    start_work, start_seconds = work, method.seconds
    records: list[StepInfo] = []
    hist = History(records, Termination.RUNNING, position=start, work=work)
    last_checkpoint = time.perf_counter()
    targets: list = [None, None]  # (the batch's y, y's rows on every process): once per batch

    def record(info: StepInfo, y: Tensor, **extra: object) -> StepInfo:
        it = method.current()
        info.loss, info.data_loss = it.value, it.data_loss
        info.work_units, info.seconds = work, method.seconds
        info.inner_seconds = method.inner_seconds
        if targets[0] is not y:  # every process changes batch at the same step
            targets[:] = [y, _all_rows(method, y)]
        S = _all_rows(method, it.S)  # a data-parallel run's predictions: all rows
        info.metrics["train"] = prediction_metrics(method.loss, S, targets[1], S.shape[1])
        if val is not None and info.iteration % val_every == 0:
            info.metrics["val"] = _val_metrics(method, val)
        elif val is not None:
            info.extra["val_skipped"] = True
        info.extra.update(extra)
        records.append(info)
        if log.isEnabledFor(logging.INFO):
            log.info("%s iteration %d: objective %.6e, |grad| %.3e, work units %.2f, %s",
                     type(method).__name__, info.iteration, info.loss, info.grad_norm,
                     info.work_units, info.outcome)
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
            None if steps_per_batch is None else epochs * data.n * steps_per_batch))
    pbar = bar(progress, total, "WU" if total == max_work else "it", leave=False)
    try:
        for epoch, b, k, x, y in itertools.chain([first], draws):
            if len(x) > n_samples:
                raise ValueError(f"batches[{b}] of epoch {epoch} has {len(x)} samples, more "
                                 f"than n_samples ({n_samples})")
            if not single:
                before = _own_work(method)
                method.set_batch(x, y)
                work += (_own_work(method) - before) * len(x) / n_samples
                hist.work = _mark_work(method, work)
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
                before = _own_work(method)
                info = method.step(x, y)
                work += (_own_work(method) - before) * len(x) / n_samples
                hist.work = _mark_work(method, work)
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
                # the timer: decided alike by every process, whether it holds a hook or not
                elapsed = time.perf_counter() - last_checkpoint
                if term is Termination.STOPPED or _anywhere(method, elapsed >= checkpoint_every):
                    if checkpoint is not None:
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


def _draws(data: Batches, epochs: int, start: Position
           ) -> Iterator[tuple[int, int, int, Tensor, Tensor]]:
    """(epoch, batch, steps already taken on it, x, y) from the start position to the end."""
    for epoch in range(start.epoch, epochs + 1):
        skip = start.batch if epoch == start.epoch else 0
        for b, x, y in data.epoch(epoch, skip):
            yield epoch, b, start.k if (epoch, b) == (start.epoch, start.batch) else 0, x, y


def _check_n_samples(data: Batches, n_samples: object, single: bool, x0: Tensor) -> int:
    """n_samples (default: Batches.default_n_samples), at least the largest known batch."""
    if n_samples is None:
        n_samples = data.default_n_samples(single)
    n_samples = check_real("n_samples", n_samples, integer=True, low=1)
    largest = max(len(x) for x, _ in data.fixed) if data.fixed is not None else len(x0)
    if n_samples < largest:
        raise ValueError(f"n_samples ({n_samples}) is smaller than a batch ({largest} samples): "
                         "give the number of training samples (the work of a step on a batch "
                         "of b samples counts b / n_samples)")
    return n_samples


def _own_work(method: Method) -> float:
    """The method's own work count (ModelMethod.own_work; ``work`` for other methods)."""
    return method.own_work if hasattr(method, "own_work") else method.work  # type: ignore


def _mark_work(method: Method, work: float) -> float:
    """Tell the method the loop's counter (ModelMethod.mark_work), if it keeps one."""
    mark = getattr(method, "mark_work", None)
    if callable(mark):
        mark(work)
    return work


def _budget(method: Method, steps: int, work: float, seconds: float, max_iter: int | None,
            max_work: float | None, max_seconds: float | None) -> Termination:
    if max_iter is not None and steps >= max_iter:
        return Termination.MAX_ITER
    if max_work is not None:
        if work >= max_work:
            return Termination.MAX_WORK
        if method.step_work is not None and work + method.step_work > max_work:
            return Termination.MAX_WORK
    if max_seconds is not None and _anywhere(method, seconds >= max_seconds):
        return Termination.MAX_SECONDS
    return Termination.RUNNING


def _all_rows(method: Method, t: Tensor) -> Tensor:
    """t's rows on every process of the method's reducer, in process order (one process: t)."""
    reducer = getattr(method, "reducer", None)
    return t if reducer is None else reducer.rows(t)


def _anywhere(method: Method, flag: bool) -> bool:
    """Whether ``flag`` holds on any process of the method's reducer (a decision read from a
    local clock, taken alike by every process so their collectives stay in step; one process:
    flag itself)."""
    reducer = getattr(method, "reducer", None)
    if reducer is None or getattr(reducer, "parts", 1) == 1:
        return flag
    return not reducer.all(not flag)


def _val_metrics(method: Method, val: tuple[Tensor, Tensor]) -> dict:
    S = predict(method.model, val[0])  # in row blocks: a big validation set's activations
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
