"""``gnvpro run`` data-parallel under torchrun: the process group, the rank that writes, the
shard of the training rows and the decisions rank 0 takes for every rank.

    torchrun --standalone --nproc_per_node=2 --no-python gnvpro run cdr --methods gnvpro

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous); ``process_group(device,
timeout)`` joins the group (gloo on CPU; NCCL on CUDA, process LOCAL_RANK on GPU LOCAL_RANK),
makes its :class:`Ranks` the current ones (:func:`current`) and leaves the group at the end.
Without torchrun, or with one process, the current ranks are ``ONE``, whose every method is the
one-process identity: a plain run is unchanged.

The rules (docs/architecture.md, "The command line under torchrun"):

* every rank loads the same data, split, θ0 and settings (``same`` checks the data); rank r
  trains on ``torch.tensor_split(x_train, world)[r]`` (``shard``) with a DistributedReducer
  (``reducer``), so the rows keep their global order and every sum is over all of them;
* rank 0 alone writes files and prints; whatever a rank would decide from the files (finished
  runs, checkpoints, locks) rank 0 decides and broadcasts (``decide``), its errors included;
* every collective waits at most ``timeout`` seconds: a rank that fails or stops makes the
  others fail within it (at once when its connection closes).
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor

from gnvpro.reduce import DistributedReducer

from . import stop
from .errors import ExperimentError

__all__ = ["DEFAULT_TIMEOUT", "MAX_TIMEOUT", "ONE", "PeerFailed", "Ranks", "check_timeout",
           "current", "process_group", "rank_tag", "world_size"]

DEFAULT_TIMEOUT = 600.0  # seconds a collective waits for the other ranks (--dist-timeout)
MAX_TIMEOUT = 7 * 86400.0  # a week: a longer wait is a hang

T = TypeVar("T")


class PeerFailed(ExperimentError):
    """Rank 0 failed in a step it takes for every rank (``Ranks.decide``); the message is its."""


@dataclass(frozen=True)
class Ranks:
    """The processes of one run: this one's ``rank`` among ``world``, on ``device``."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def writer(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        """Whether the training rows are sharded over several processes."""
        return self.world > 1

    def decide(self, fn: Callable[[], T]) -> T:
        """fn() on rank 0, its value broadcast to every rank (one process: fn()). When fn raises
        on rank 0, it raises there and every other rank raises PeerFailed with its message, so
        all ranks take the same branch."""
        if not self.parallel:
            return fn()
        import torch.distributed as dist

        box: list[Any] = [None]
        error: Exception | None = None
        if self.writer:
            try:
                box[0] = (True, fn())
            except Exception as e:
                error, box[0] = e, (False, _one_line(e))
        dist.broadcast_object_list(box, src=0)
        if error is not None:
            raise error
        ok, value = box[0]
        if not ok:
            raise PeerFailed(f"rank 0 failed: {value}")
        return value

    def same(self, value: Any, what: str) -> None:
        """Refuse (on every rank) a ``value`` that is not the same on every rank."""
        if not self.parallel:
            return
        import torch.distributed as dist

        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        other = [r for r, v in enumerate(values) if v != values[0]]
        if other:
            raise ExperimentError(f"rank(s) {', '.join(map(str, other))} read other {what} than "
                                  "rank 0: every process must read the same (give each node the "
                                  "same file with --data or $GNVPRO_DATA)")

    def shard(self, t: Tensor) -> Tensor:
        """This rank's contiguous block of the rows of ``t`` (torch.tensor_split; one process:
        t). Every rank needs one row at least."""
        if not self.parallel:
            return t
        if len(t) < self.world:
            raise ExperimentError(f"the training set has {len(t)} rows, fewer than the "
                                  f"{self.world} processes: start fewer processes")
        return torch.tensor_split(t, self.world)[self.rank]

    def reducer(self, n_local: int) -> dict[str, Any]:
        """The method's keyword arguments for ``n_local`` rows: a DistributedReducer over every
        rank's rows (one process: none, the method's own mean)."""
        if not self.parallel:
            return {}
        return {"reducer": DistributedReducer(n_local, device=self.device)}

    def stop_requested(self) -> bool:
        """Whether a signal asked any rank to stop (stop.requested); a rank that got none then
        takes the stop as its own, so that every rank stops at the same step."""
        if not self.parallel:
            return stop.requested()
        import torch.distributed as dist

        t = torch.tensor([stop.signal_number() or 0], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        signum = int(t.item())
        if signum and not stop.requested():
            stop.adopt(signum)
        return signum != 0

    def check_stop(self) -> None:
        """stop.check(), on every rank when any rank got a signal (stop_requested)."""
        if self.parallel:
            self.stop_requested()
        stop.check()


ONE = Ranks()
_current = ONE


def current() -> Ranks:
    """The ranks of the run in progress (``ONE`` outside :func:`process_group`)."""
    return _current


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None and default is not None:
        return default
    try:
        return int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        what = "not set" if raw is None else f"{raw!r}, not a whole number"
        raise ExperimentError(f"${name} is {what}: start the processes with torchrun, which "
                              "sets it") from None


def world_size() -> int:
    """The number of processes torchrun started ($WORLD_SIZE; 1 without torchrun)."""
    return _env_int("WORLD_SIZE", 1)


def rank_tag() -> str:
    """' (rank R/N)' under torchrun with several processes, else '' (for messages)."""
    try:
        world = world_size()
        return f" (rank {_env_int('RANK')}/{world})" if world > 1 else ""
    except ExperimentError:
        return ""


def check_timeout(seconds: float) -> float:
    """``seconds`` if it is a usable collective timeout, else ExperimentError."""
    if not (isinstance(seconds, int | float) and math.isfinite(seconds)
            and 0 < seconds <= MAX_TIMEOUT):
        raise ExperimentError(f"--dist-timeout must be a number of seconds in (0, "
                              f"{MAX_TIMEOUT:g}], got {seconds!r}")
    return float(seconds)


@contextlib.contextmanager
def process_group(device: str = "cpu", timeout: float = DEFAULT_TIMEOUT) -> Iterator[Ranks]:
    """Join torchrun's process group for the block (module docstring) and yield its Ranks;
    without torchrun or with one process, yield ONE and join nothing."""
    global _current
    timeout = check_timeout(timeout)
    world = world_size()
    if world <= 1:
        yield ONE
        return
    rank, local = _env_int("RANK"), _env_int("LOCAL_RANK", 0)
    import torch.distributed as dist

    if not dist.is_available():
        raise ExperimentError("this torch has no torch.distributed: run gnvpro run in one "
                              "process (without torchrun)")
    where = _device(device, local)
    backend = "nccl" if where.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout))
    except (RuntimeError, ValueError) as e:
        raise ExperimentError(f"rank {rank} cannot join the process group ({_one_line(e)}): "
                              "start the processes with torchrun") from None
    before, _current = _current, Ranks(rank, world, where)
    try:
        yield _current
    finally:
        _current = before
        # free cyclic garbage that holds gloo work (tensors, DDP wrappers) while the interpreter
        # is whole: a gloo thread that frees it during finalisation aborts the process
        # ("terminate called without an active exception": tests/test_cli_distributed.py's
        # ADAM/SGD run under torchrun aborted in about half its runs without this line)
        gc.collect()
        dist.destroy_process_group()


def _device(device: str, local_rank: int) -> torch.device:
    """The device of process ``local_rank`` of this node: the CPU, or its own GPU."""
    if not device.startswith("cuda"):
        return torch.device("cpu")
    if device != "cuda":
        raise ExperimentError(f"--device {device}: under torchrun give --device cuda (process "
                              "LOCAL_RANK uses GPU LOCAL_RANK)")
    if torch.cuda.device_count() <= local_rank:
        raise ExperimentError(f"--device cuda: process {local_rank} of this node has no GPU "
                              f"({torch.cuda.device_count()} visible): start at most that many "
                              "processes per node (--nproc_per_node)")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)
