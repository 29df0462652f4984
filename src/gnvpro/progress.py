"""Progress bars on a terminal only: a log file gets no carriage-return bars (they become one
endless line); the experiment runner prints one plain line per level there instead.

tqdm is optional (the library needs torch and numpy only): without it a plain one-line bar
with the same interface (``n``, ``update``, ``set_postfix``, ``close``) is drawn instead.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["PlainBar", "bar", "on_terminal"]


def on_terminal() -> bool:
    """Whether stderr is an interactive terminal."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class PlainBar:
    """A minimal stand-in for tqdm: ``desc n/total unit key=value`` redrawn on one line."""

    def __init__(self, total: float | None = None, unit: str = "it", desc: str | None = None,
                 leave: bool = True, **_: Any) -> None:
        self.n: float = 0
        self.total, self.unit, self.desc, self.leave = total, unit, desc, leave
        self._postfix = ""
        self._width = 0

    def _draw(self) -> None:
        total = "" if self.total is None else f"/{self.total:g}"
        text = f"{self.desc + ': ' if self.desc else ''}{self.n:g}{total} {self.unit}"
        text += f" {self._postfix}" if self._postfix else ""
        sys.stderr.write("\r" + text.ljust(self._width))
        sys.stderr.flush()
        self._width = len(text)

    def update(self, k: float = 1) -> None:
        self.n += k
        self._draw()

    def set_postfix(self, **kw: Any) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in kw.items())
        self._draw()

    def close(self) -> None:
        sys.stderr.write("\n" if self.leave else "\r" + " " * self._width + "\r")
        sys.stderr.flush()


def bar(enabled: bool, total: float | None, unit: str = "it", **kw: Any) -> Any:
    """A tqdm bar (a :class:`PlainBar` without tqdm) when enabled and stderr is a terminal,
    else None."""
    if not (enabled and on_terminal()):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return PlainBar(total=total, unit=unit, **kw)
    return tqdm(total=total, unit=unit, **kw)
