"""Which methods and seeds an invocation runs (``--methods``, ``--seeds``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ExperimentError
from .train import METHODS as KNOWN_METHODS

if TYPE_CHECKING:
    from .config import ExperimentConfig

__all__ = ["MAX_SEEDS", "parse_methods", "parse_seeds"]

MAX_SEEDS = 1000  # one invocation runs at most this many seeds (a typo must not run forever)


def parse_methods(text: str | None, cfg: ExperimentConfig) -> list[str]:
    """``"gnvpro,gn"`` → ["gnvpro", "gn"] (validated against the config); None → defaults."""
    if text is None:
        return list(cfg.default_methods)
    out = [m.strip().lower() for m in text.split(",") if m.strip()]
    if not out:
        raise ExperimentError("--methods: give at least one method")
    for m in out:
        if m not in KNOWN_METHODS:
            raise ExperimentError(f"unknown method {m!r}; known: {', '.join(KNOWN_METHODS)}")
        if m not in cfg.methods:
            raise ExperimentError(
                f"method {m!r} is not configured for experiment {cfg.name!r}; "
                f"configured: {', '.join(cfg.methods)}"
            )
    return list(dict.fromkeys(out))


def parse_seeds(text: str | None, cfg: ExperimentConfig) -> list[int | str]:
    """``"0-5"`` / ``"0,2,4"`` / ``"ref"`` / ``"ref,0-2"`` → seeds (ints, or "ref" for CDR)."""
    if text is None:
        text = cfg.default_seeds
    seeds: list[int | str] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        if part == "ref":
            from .problems.registry import get_problem, names

            if not get_problem(cfg.problem).has_reference:
                raise ExperimentError(f"seed 'ref' (the reference split and θ0) exists only for "
                                      f"the {names(lambda p: p.has_reference)} experiment, "
                                      f"not {cfg.name!r}")
            seeds.append("ref")
            continue
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                if hi - lo + 1 > MAX_SEEDS:
                    raise ExperimentError(f"--seeds: {part} is {hi - lo + 1} seeds; at most "
                                          f"{MAX_SEEDS} per invocation")
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ExperimentError:
            raise
        except ValueError:
            raise ExperimentError(
                f"--seeds: cannot read {part!r}; use e.g. 0-5, 0,2,4 or ref"
            ) from None
        if len(seeds) > MAX_SEEDS:
            raise ExperimentError(f"--seeds: more than {MAX_SEEDS} seeds; at most {MAX_SEEDS} "
                                  "per invocation")
    if not seeds:
        raise ExperimentError("--seeds: give at least one seed")
    if any(isinstance(s, int) and s < 0 for s in seeds):
        raise ExperimentError("--seeds: seeds must be >= 0")
    return list(dict.fromkeys(seeds))
