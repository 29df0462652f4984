"""What the ``experiments`` extra brings: the library needs torch and numpy only, the
application (its data, figures and the ``gnvpro`` command) also these."""

from __future__ import annotations

import importlib.util
import sys

__all__ = ["INSTALL", "REQUIRES", "missing", "missing_message"]

REQUIRES: tuple[str, ...] = ("scipy", "matplotlib", "tqdm") + (
    ("tomli",) if sys.version_info < (3, 11) else ()
)
INSTALL = "pip install 'gnvpro[experiments]'"


def missing() -> list[str]:
    """The modules of the extra that cannot be imported here."""
    out = []
    for name in REQUIRES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name)
    return out


def missing_message(names: list[str]) -> str:
    """One line: what is missing and what to install."""
    return (f"the gnvpro command needs the experiments extra ({', '.join(names)} not "
            f"installed): {INSTALL}")
