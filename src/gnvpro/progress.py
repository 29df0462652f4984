"""Progress bars on a terminal only: a log file gets no carriage-return bars (they become one
endless line); the experiment runner prints one plain line per level there instead."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["bar", "on_terminal"]


def on_terminal() -> bool:
    """Whether stderr is an interactive terminal."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def bar(enabled: bool, total: float | None, unit: str = "it", **kw: Any) -> Any:
    """A tqdm bar when enabled and stderr is a terminal, else None."""
    if not (enabled and on_terminal()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, **kw)
