"""The outer solver: a descent combined with a search (docs/method.md §3), its settings and its
stopping tests.

    SolverConfig(descent=LanczosSubspace(), search=TrustRegion())   the paper's trust region
    SolverConfig(descent=PreconditionedCG(), search=StrongWolfe())  truncated Gauss-Newton
    SolverConfig(descent=LBFGSTwoLoop(), search=StrongWolfe())      L-BFGS
    state, info = outer_step(problem, state, config)                 one outer iteration

A trust region takes a descent with ``trust_step`` (LanczosSubspace, Steihaug), a line search
one with ``direction`` (PreconditionedCG, LBFGSTwoLoop). The problem is any object with
evaluate(θ, prev) -> point (with .value and .inner), gradient(point) and gn_operator(point); the
joint (θ, W) Gauss-Newton baseline runs on this too.

Settings of earlier versions were flat (``subproblem``, ``max_krylov``, ``krylov_rtol``,
``tn_memory``, ``radius_rule``, ``min_radius``, ``extrapolate``, ``max_line_search``;
L-BFGS-VarPro's ``memory``): :func:`upgrade_settings` maps them to ``descent`` and ``search``, so
saved configs and checkpoints still load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .descent import (
    DESCENTS,
    Hybrid,
    LanczosSubspace,
    LBFGSTwoLoop,
    PreconditionedCG,
    Steihaug,
)
from .search import LineStep, StrongWolfe, TrustRegion, wolfe_line_step
from .state import (
    Problem,
    SavedPoint,
    SolverState,
    StepInfo,
    Termination,
    initial_state,
)
from .validate import describe, in_range, settings_dict, validate_config

__all__ = ["LineStep", "Problem", "SavedPoint", "SolverConfig", "SolverState", "StepInfo",
           "Termination", "check_termination", "initial_state", "outer_step", "paper_trust_region",
           "truncated_gauss_newton", "upgrade_settings", "wolfe_line_step"]

Descent = LanczosSubspace | Steihaug | PreconditionedCG | LBFGSTwoLoop | Hybrid
Search = TrustRegion | StrongWolfe


def paper_trust_region() -> dict[str, Any]:
    """The paper's (and the reference code's) trust region: Lanczos, ≤ 20 vectors, relative
    tolerance 1e-2, the reference's radius rule."""
    return {"descent": LanczosSubspace(), "search": TrustRegion()}


def truncated_gauss_newton() -> dict[str, Any]:
    """Truncated Gauss-Newton: ≤ 10 CG products preconditioned by L-BFGS(10), strong Wolfe."""
    return {"descent": PreconditionedCG(), "search": StrongWolfe()}


@dataclass(frozen=True)
class SolverConfig:
    """Settings of the outer solver; the method configs that run it extend this one.

    Parameters
    ----------
    descent : LanczosSubspace, Steihaug, PreconditionedCG, LBFGSTwoLoop or Hybrid
        How the step (trust region) or direction (line search) is computed from g and H_GN
        (gnvpro.descent). A dict with ``kind`` ("lanczos", "steihaug", "cg", "lbfgs",
        "hybrid") and the fields is read as that descent.
    search : TrustRegion or StrongWolfe
        How far to go (gnvpro.search); "trust_region" takes lanczos / steihaug, "strong_wolfe"
        takes cg / lbfgs / hybrid.
    grad_rtol, grad_atol : float
        Stop when ‖g‖/‖g0‖ ≤ grad_rtol or ‖g‖ ≤ grad_atol.

    Notes
    -----
    Defaults: the paper's trust region (``paper_trust_region()``); GNvproConfig's default is
    truncated Gauss-Newton (``truncated_gauss_newton()``).

    References
    ----------
    T. Steihaug, SIAM J. Numer. Anal. 20 (1983); N. Gould, S. Lucidi, M. Roma, Ph. Toint,
    "Solving the trust-region subproblem using the Lanczos method", SIAM J. Optim. 9 (1999);
    J. Nocedal, S. Wright, Numerical Optimization (2006), chapters 3, 4, 7.
    """

    descent: Descent = field(default_factory=LanczosSubspace)
    search: Search = field(default_factory=TrustRegion)
    grad_rtol: float = field(default=1e-10, metadata=in_range(low=0.0))
    grad_atol: float = field(default=0.0, metadata=in_range(low=0.0))

    def __post_init__(self) -> None:
        validate_config(self)  # every field, by its type and range (TypeError / ValueError)
        wants = "trust_step" if isinstance(self.search, TrustRegion) else "direction"
        if not hasattr(self.descent, wants):
            fits = [d.__name__ for d in DESCENTS if hasattr(d, wants)]
            raise ValueError(f"{type(self).__name__}: the descent {self.descent!r} does not fit "
                             f"the search {type(self.search).__name__}; use one of "
                             f"{', '.join(fits)}")

    def to_dict(self) -> dict:
        """The settings as plain values (descent and search as dicts with their ``kind``)."""
        return settings_dict(self)

    @classmethod
    def upgrade(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        """A settings dict of an earlier version (flat keys) in today's form."""
        return upgrade_settings(d, cls)


_DESCENT_OF = {"lanczos": "lanczos", "steihaug": "steihaug", "tn": "cg"}
_TRUST_REGION_KEYS = {"radius_rule": "rule", "min_radius": "min_radius",
                      "extrapolate": "extrapolate"}
LEGACY_KEYS = frozenset({"subproblem", "max_krylov", "krylov_rtol", "tn_memory",
                         "max_line_search", "memory", *_TRUST_REGION_KEYS})


def upgrade_settings(d: Mapping[str, Any], base: Any = None) -> dict[str, Any]:
    """Map the flat solver keys of earlier versions to ``descent`` and ``search`` dicts.

    ``subproblem`` picks the pair ("lanczos", "steihaug": that descent and a trust region;
    "tn": PreconditionedCG and strong Wolfe); without it the kinds of ``base`` (a config, or a
    config type's defaults) do. max_krylov, krylov_rtol, tn_memory (L-BFGS-VarPro: memory) go
    to the descent; radius_rule, min_radius, extrapolate, max_line_search to the search. A key
    that means nothing for the chosen pair (a trust-region key with a line search) is dropped,
    as the earlier versions ignored it. A dict without flat keys is returned unchanged."""
    if not isinstance(d, Mapping):
        return d
    base_descent, base_search = _default(base, "descent"), _default(base, "search")
    legacy = set(d) & LEGACY_KEYS
    if not isinstance(base_descent, LBFGSTwoLoop):
        legacy.discard("memory")  # L-BFGS-VarPro's alone
    if not legacy:
        return dict(d)
    d = dict(d)
    sub = d.pop("subproblem", None)
    if sub is not None and sub not in _DESCENT_OF:
        raise ValueError(f"subproblem must be one of {', '.join(map(repr, _DESCENT_OF))} (now "
                         f"descent=..., search=...), got {describe(sub)}")
    if sub is not None:
        descent = {"kind": _DESCENT_OF[sub]}
        search = {"kind": "strong_wolfe" if sub == "tn" else "trust_region"}
    else:
        descent = {} if base_descent is None else {"kind": base_descent.kind}
        search = {} if base_search is None else {"kind": base_search.kind}
    for table, part in ((descent, _as_dict(d.get("descent"))), (search, _as_dict(d.get("search")))):
        if part.get("kind", table.get("kind")) == table.get("kind"):  # another kind: replaced
            table.update(part)
    kind, skind = descent.get("kind"), search.get("kind")
    targets = {  # old key -> (the table, its new key) where it still means something
        "max_krylov": (descent, "max_products", kind != "lbfgs"),
        "krylov_rtol": (descent, "rtol", kind != "lbfgs"),
        "tn_memory": (descent, "memory", kind == "cg"),
        "memory": (descent, "memory", kind == "lbfgs"),
        "radius_rule": (search, "rule", skind == "trust_region"),
        "min_radius": (search, "min_radius", skind == "trust_region"),
        "extrapolate": (search, "extrapolate", skind == "trust_region"),
        "max_line_search": (search, "max_evals", skind == "strong_wolfe"),
    }
    for old in legacy - {"subproblem"}:
        table, new, means = targets[old]
        value = d.pop(old)
        if means:
            table[new] = value
    return {**d, "descent": descent, "search": search}


def _as_dict(v: Any) -> dict[str, Any]:
    """A descent or search given as a dict or an instance, as a dict (None: {})."""
    if v is None:
        return {}
    return dict(v) if isinstance(v, Mapping) else settings_dict(v)


def _default(base: Any, name: str) -> Any:
    """Field ``name`` of ``base``: a config (its value) or a config type (its default); None
    without one."""
    f = getattr(base, "__dataclass_fields__", {}).get(name) if base is not None else None
    if f is None:
        return None
    if not isinstance(base, type):
        return getattr(base, name)
    return f.default_factory() if callable(f.default_factory) else f.default


def check_termination(
    state: SolverState, cfg: SolverConfig, max_iter: int | None, max_work: float | None,
    max_seconds: float | None = None,
) -> Termination:
    gn = state.grad_norm
    if gn <= cfg.grad_atol:
        return Termination.GRAD_ATOL
    if state.grad_norm0 > 0 and gn / state.grad_norm0 <= cfg.grad_rtol:
        return Termination.GRAD_RTOL
    if max_iter is not None and state.iteration >= max_iter:
        return Termination.MAX_ITER
    if max_work is not None and state.work >= max_work:
        return Termination.MAX_WORK
    if max_seconds is not None and state.seconds >= max_seconds:
        return Termination.MAX_SECONDS
    min_radius = getattr(getattr(cfg, "search", None), "min_radius", None)
    if state.radius is not None and min_radius is not None and state.radius < min_radius:
        return Termination.RADIUS
    if state.stalled:
        return Termination.LINE_SEARCH
    return Termination.RUNNING


def outer_step(problem: Problem, state: SolverState, cfg: SolverConfig
               ) -> tuple[SolverState, StepInfo]:
    """One outer iteration: ``cfg.search`` along ``cfg.descent``'s step."""
    return cfg.search.step(problem, state, cfg.descent)
