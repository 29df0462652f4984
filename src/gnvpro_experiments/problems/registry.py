"""The registered problems: ``problem = NAME`` in an experiment's TOML names one of them.

A new experiment is

1. one problem file: a :class:`~.base.Problem` subclass (``name``, ``data_keys``, ``load``,
   ``split``; optionally the reference seed and ``figures``), e.g. ``problems/heat.py``;
2. one TOML file in ``gnvpro_experiments/configs/`` (``problem = "heat"``, its ``[data]``
   keys among the problem's ``data_keys``);
3. its entry in the tuple of ``problems/__init__.py`` (``Heat(),`` and its import), or,
   outside the package, a :func:`register` call.

This module is a lookup table that imports no problem: the built-in problems register
themselves in ``problems/__init__.py``, which Python runs before any module of the package (so
config, data and report, which look problems up here, sit below no problem module).
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ExperimentError
from .base import Problem

__all__ = ["PROBLEMS", "Problem", "get_problem", "names", "register"]

#: name → problem, in the order error messages list them
PROBLEMS: dict[str, Problem] = {}


def register(problem: Problem) -> Problem:
    """Make ``problem`` selectable as ``problem = problem.name``; returns it.

    Raises:
        TypeError: not a Problem, or its ``name`` / ``data_keys`` are not a string / a set.
        ValueError: another problem has that name.
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"register: expected a Problem, got {type(problem).__name__}")
    if not isinstance(getattr(problem, "name", None), str) or not problem.name:
        raise TypeError(f"register: {type(problem).__name__} needs a name (a non-empty str)")
    if not isinstance(getattr(problem, "data_keys", None), frozenset | set):
        raise TypeError(f"register: {type(problem).__name__}.data_keys must be a set of the "
                        "[data] keys it reads")
    old = PROBLEMS.get(problem.name)
    if old is not None and old is not problem:
        raise ValueError(f"register: a problem named {problem.name!r} exists already")
    PROBLEMS[problem.name] = problem
    return problem


def get_problem(name: str) -> Problem:
    """The problem registered as ``name``; ExperimentError listing the known names if none."""
    p = PROBLEMS.get(name) if isinstance(name, str) else None
    if p is None:
        raise ExperimentError(f"problem must be one of {', '.join(PROBLEMS)}, got {name!r}")
    return p


def names(where: Callable[[Problem], bool]) -> str:
    """The names of the registered problems ``where`` holds for, as "a, b and c" (messages)."""
    got = [n for n, p in PROBLEMS.items() if where(p)]
    return " and ".join(([", ".join(got[:-1])] if got[:-1] else []) + got[-1:])

