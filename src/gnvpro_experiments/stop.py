"""Stopping ``gnvpro run`` on SIGINT or SIGTERM without losing work.

The first signal asks the training to stop after its current step: the loop writes a checkpoint
and :class:`Interrupted` is raised; the command line then says how to continue (``--resume``).
A second signal stops at once (KeyboardInterrupt; the last periodic checkpoint remains).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator

__all__ = ["Interrupted", "adopt", "check", "handle_signals", "requested", "signal_number"]

_requested: int | None = None


class Interrupted(Exception):
    """A stop asked for by a signal, after the running training was checkpointed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def requested() -> bool:
    """Whether a signal asked the run to stop."""
    return _requested is not None


def signal_number() -> int | None:
    """The signal that asked the run to stop (None: none did)."""
    return _requested


def adopt(signum: int) -> None:
    """Ask for a stop as signal ``signum`` would (one that another process of the run got)."""
    global _requested
    _requested = signum


def check() -> None:
    """Raise Interrupted if a signal asked the run to stop."""
    if _requested is not None:
        raise Interrupted(_requested)


def _handler(signum: int, frame: object) -> None:
    global _requested
    if _requested is not None:
        raise KeyboardInterrupt
    _requested = signum
    print(f"gnvpro run: {signal.Signals(signum).name} received: stopping after the current "
          "step (checkpointing); send it again to stop at once", file=sys.stderr, flush=True)


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM ask for a stop (module docstring)."""
    global _requested
    _requested = None
    sigs = [signal.SIGINT, signal.SIGTERM]
    try:
        old = {s: signal.signal(s, _handler) for s in sigs}
    except ValueError:  # not the main thread: leave the signals alone
        yield
        return
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _requested = None
