"""The experiments' methods: each name is a library method, its settings and a batch schedule,
all trained by the library's one loop (gnvpro.loop.fit).

    records = train(name, model, data, settings)

``settings`` is ExperimentConfig.method_settings(...) plus seed, progress and regularizer: the
method's config fields (GNvproConfig, LBFGSVarProConfig, JointGNConfig, FirstOrderConfig), the
budget (max_work, max_iter, max_seconds), for the sub-batch methods the schedule (epochs,
n_batches, iters_per_batch), and keep_best_val (ADAM/SGD). Record 0 is the common start θ0 with
W*(θ0) (2 work units). Adding a method is one entry in METHODS.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from gnvpro.batches import fixed_batches
from gnvpro.loop import History, KeepBest, Position, fit
from gnvpro.methods import (
    FirstOrder,
    FirstOrderConfig,
    GNvpro,
    GNvproConfig,
    JointGaussNewton,
    JointGNConfig,
    LBFGSVarPro,
    LBFGSVarProConfig,
)
from gnvpro.search import StrongWolfe
from gnvpro.solver import paper_trust_region, truncated_gauss_newton, upgrade_settings
from gnvpro.validate import settings_dict

from . import launch
from .problems.base import Split

__all__ = ["METHODS", "MethodSpec", "ResumeError", "check_budget", "config_keys", "make_config",
           "solver_settings", "train"]

SOLVER_PARTS = frozenset({"descent", "search"})
NO_WORK_BUDGET = 1e12  # max_work at or above this: the iterations, epochs or seconds are the budget


class ResumeError(ValueError):
    """The training state to resume from does not fit this run (another method, settings or
    schedule)."""

# the experiments' GNvpro solves W* exactly (the paper's setting; GNvproConfig's default is
# inexact, inner_forcing = 1e-2)
_PAPER_TR = {**paper_trust_region(), "inner_forcing": 0.0}
_TN = {**truncated_gauss_newton(), "inner_forcing": 0.0}


@dataclass(frozen=True)
class MethodSpec:
    """An experiment method: the library class, its config type, the experiments' defaults for
    the config, and the schedule ("full": the whole training set; "sub-batches": the paper's
    fixed sub-batches, ``iters`` steps per batch by default)."""

    cls: type
    config_type: type
    defaults: Mapping[str, Any] = field(default_factory=dict)
    schedule: str = "full"
    iters: int = 1


METHODS: dict[str, MethodSpec] = {
    "gnvpro": MethodSpec(GNvpro, GNvproConfig, _PAPER_TR),
    "gnvpro-tn": MethodSpec(GNvpro, GNvproConfig, _TN),
    "gn": MethodSpec(JointGaussNewton, JointGNConfig),
    "gn-blockdiag": MethodSpec(JointGaussNewton, JointGNConfig, {"coupled": False}),
    "lbfgs-vpro": MethodSpec(LBFGSVarPro, LBFGSVarProConfig),
    "adam": MethodSpec(FirstOrder, FirstOrderConfig, {"optimizer": "adam"}),
    "sgd": MethodSpec(FirstOrder, FirstOrderConfig, {"optimizer": "sgd"}),
    "gnvpro-stochastic": MethodSpec(GNvpro, GNvproConfig, {**_PAPER_TR, "inner_max_iter": 400},
                                    "sub-batches", 3),
    "gnvpro-tn-stochastic": MethodSpec(GNvpro, GNvproConfig, {**_TN, "inner_max_iter": 400},
                                       "sub-batches", 3),
    "gn-stochastic": MethodSpec(JointGaussNewton, JointGNConfig, {"inner_max_iter": 400},
                                "sub-batches", 3),
    "lbfgs-vpro-stochastic": MethodSpec(LBFGSVarPro, LBFGSVarProConfig,
                                        {"inner_max_iter": 400,
                                         "search": StrongWolfe(max_evals=30)},
                                        "sub-batches", 30),
}

BUDGET_KEYS = ("max_work", "max_iter", "max_seconds")
SCHEDULE_KEYS = ("epochs", "n_batches", "iters_per_batch")


def config_keys(name: str) -> set[str]:
    """The settings a config may give method ``name`` (besides budgets and overrides)."""
    spec = METHODS[name]
    keys = {f.name for f in dataclasses.fields(spec.config_type)} - {"seed", "threads"}
    if spec.schedule == "sub-batches":
        keys |= {"n_batches", "iters_per_batch"}
    if spec.cls is FirstOrder:
        keys = (keys - {"optimizer"}) | {"keep_best_val"}
        if spec.defaults.get("optimizer") == "adam":
            keys -= {"momentum", "nesterov"}
    return keys


def _count(settings: Mapping[str, Any], key: str, default: int) -> int:
    """An integer setting (epochs, n_batches, iters_per_batch): refused when fractional."""
    v = settings.get(key, default)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{key} must be a whole number >= 1, got {v!r}")
    return v


def check_budget(name: str, settings: Mapping[str, Any]) -> None:
    """Refuse settings of method ``name`` that leave it without a budget: a full-batch method
    needs max_work (below 1e12), max_iter or max_seconds; the sub-batch methods' epochs bound
    them. Fractional epochs, batch counts or iteration counts are refused."""
    if name not in METHODS:
        raise ValueError(f"unknown training method {name!r}; choose one of {', '.join(METHODS)}")
    spec = METHODS[name]
    if spec.schedule == "sub-batches":
        for key, default in (("epochs", 2), ("n_batches", 4), ("iters_per_batch", spec.iters)):
            _count(settings, key, default)
        return
    work = settings.get("max_work")
    if settings.get("max_iter") is None and settings.get("max_seconds") is None and (
            work is None or work >= NO_WORK_BUDGET):
        got = "no budget" if work is None else f"max_work {work:g} (>= 1e12 means no work budget)"
        raise ValueError(f"{name} has {got} and no max_iter or max_seconds: give it a budget "
                         "(or a smaller --budget-scale)")


def make_config(name: str, settings: Mapping[str, Any]) -> Any:
    """The method's config from the experiments' defaults and ``settings`` (validated). A
    descent or search given as a table changes the default's fields, or with another ``kind``
    replaces it (that kind's defaults for the fields it does not name)."""
    spec = METHODS[name]
    fields = {f.name for f in dataclasses.fields(spec.config_type)}
    base = spec.config_type(**spec.defaults)
    if SOLVER_PARTS <= fields:  # flat keys of earlier versions: read, never ignored
        settings = upgrade_settings(settings, base)
    given = {k: v for k, v in settings.items() if k in fields}
    for k in SOLVER_PARTS & set(given):
        part, default = given[k], getattr(base, k)
        if isinstance(part, Mapping) and part.get("kind", default.kind) == default.kind:
            given[k] = {**settings_dict(default), **part}
    return spec.config_type(**{**spec.defaults, **given})


def solver_settings(name: str, settings: Mapping[str, Any]) -> dict:
    """A [methods.NAME] table with the solver in today's form: the flat keys of earlier
    versions (max_krylov, subproblem, ...) read as ``descent`` / ``search``, both written out
    in full (every field, with its kind), so equal settings compare equal however they were
    written. A table the method's config refuses is returned as it is (its check names it)."""
    spec = METHODS[name]
    if not {f.name for f in dataclasses.fields(spec.config_type)} >= SOLVER_PARTS:
        return dict(settings)
    base = spec.config_type(**spec.defaults)
    out = upgrade_settings(settings, base)
    try:
        cfg = make_config(name, out)
    except (TypeError, ValueError):
        return out
    return {**out, **{k: settings_dict(getattr(cfg, k)) for k in SOLVER_PARTS}}


def train(name: str, model: nn.Module, data: Split, settings: Mapping[str, Any],
          checkpoint: Callable[[dict], None] | None = None, checkpoint_every: float = 300.0,
          resume: Mapping[str, Any] | None = None) -> list[dict]:
    """Train ``model`` in place with method ``name``; one record (dict) per step.

    checkpoint(state) is called at most every ``checkpoint_every`` seconds with what
    ``resume`` takes to continue: {"optimizer": the method's state_dict, "position": where the
    schedule stands, "records": the records so far, "best": the KeepBest model and score}; the
    model's weights are the caller's to save. With ``resume`` (and the model holding the saved
    weights) training continues with the budget that was left."""
    if name not in METHODS:
        raise ValueError(f"unknown training method {name!r}; choose one of {', '.join(METHODS)}")
    spec = METHODS[name]
    s = dict(settings)
    check_budget(name, s)
    if spec.cls is FirstOrder:
        s["seed"] = int(s.get("seed", 0))
    ranks = launch.current()  # under torchrun: this rank's rows, sums over every rank's
    x, y = ranks.shard(data.x_train), ranks.shard(data.y_train)
    method = spec.cls(model, s.get("loss", "least_squares"), s.get("alpha_w", 1e-10),
                      s.get("alpha_theta", 1e-10), config=make_config(name, s),
                      regularizer=s.get("regularizer"), **ranks.reducer(len(x)))
    schedule: dict[str, Any] = {}
    if spec.schedule == "sub-batches":
        n_batches = _count(s, "n_batches", 4)
        if n_batches > len(x):
            raise ValueError(f"{name}: n_batches {n_batches} is more than the {len(x)} training "
                             "samples; use fewer batches or more data (--subset)")
        batches = fixed_batches(x, y, n_batches, int(s.get("seed", 0)))
        schedule = {"epochs": _count(s, "epochs", 2),
                    "steps_per_batch": _count(s, "iters_per_batch", spec.iters)}
    else:
        batches = [(x, y)]
    val = (data.x_val, data.y_val) if data.x_val is not None and len(data.x_val) else None
    keep = KeepBest(model, method.loss.classification) if s.get("keep_best_val") else None
    if keep is not None and val is None:
        raise ValueError("keep_best_val needs validation data (data.x_val is empty)")
    budget = {k: s.get(k) for k in ("max_work", "max_iter", "max_seconds")}
    if budget["max_work"] is not None and budget["max_work"] >= NO_WORK_BUDGET:
        budget["max_work"] = None  # the iterations, epochs or seconds are the budget
    done: list[dict] = []
    callbacks: list[Callable] = [] if keep is None else [keep]
    callbacks.append(lambda rec: ranks.stop_requested())  # SIGINT/SIGTERM: checkpoint, stop
    start = None
    if resume is not None:
        try:
            method.load_state_dict(resume["optimizer"])
            done = list(resume["records"])
            start = Position(**resume["position"])
            _check_position(start, len(batches), int(schedule.get("epochs", 1)), done)
            budget = _left(budget, done, start.work)
            if keep is not None and resume.get("best") is not None:
                keep.state, keep.score = resume["best"]["state"], float(resume["best"]["score"])
        except (KeyError, TypeError, ValueError) as e:
            raise ResumeError(f"its training state does not fit {name}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else e!r}"
                              ) from None

    def as_dicts(hist: History) -> list[dict]:
        return done + [{"method": name, **rec.to_dict()} for rec in hist.records]

    def save(hist: History) -> None:
        assert checkpoint is not None
        best = None if keep is None or keep.state is None else {"state": keep.state,
                                                                "score": keep.score}
        checkpoint({"optimizer": method.state_dict(), "position": asdict(hist.position),
                    "records": as_dicts(hist), "best": best})

    hist = fit(method, batches, n_samples=len(x), val=val, callbacks=callbacks,
               progress=bool(s.get("progress")), record_start=resume is None,
               checkpoint=save if checkpoint else None, checkpoint_every=checkpoint_every,
               start=start, **budget, **schedule)
    ranks.check_stop()  # a signal stopped the loop (after its checkpoint): no level end
    if keep is not None:
        keep.restore()
    records = as_dicts(hist)
    records[-1]["termination"] = hist.termination.value
    if hist.batch_stops:
        records[-1]["batch_stops"] = hist.batch_stops
    return records


def _check_position(p: Position, n_batches: int, epochs: int, done: list[dict]) -> None:
    """A saved schedule position inside this schedule, after at least the start record."""
    ok = (isinstance(p.epoch, int) and 1 <= p.epoch <= epochs and isinstance(p.batch, int)
          and 0 <= p.batch < n_batches and isinstance(p.k, int) and p.k >= 0
          and isinstance(p.work, int | float) and math.isfinite(p.work) and p.work >= 0)
    if not ok:
        raise ValueError(f"position {p} is outside the schedule ({epochs} epochs of "
                         f"{n_batches} batches)")
    if not done or not all(isinstance(r, dict) for r in done):
        raise ValueError("it holds no records")


def _left(budget: dict, done: list[dict], work: float) -> dict:
    """The budget left after the records ``done`` (record 0 is the start)."""
    out = dict(budget)
    if out["max_work"] is not None:
        out["max_work"] = max(0.0, out["max_work"] - (work - done[0]["work_units"]))
    if out["max_iter"] is not None:
        out["max_iter"] = max(0, out["max_iter"] - (len(done) - 1))
    if out["max_seconds"] is not None:
        out["max_seconds"] = max(0.0, out["max_seconds"] - (done[-1]["seconds"]
                                                            - done[0]["seconds"]))
    return out
