"""Experiment configurations (docs/experiments.md sections 1-3), loaded from TOML.

A config file (``experiments/configs/NAME.toml``, or any path) has the top-level keys

    name, problem (problems/registry.py: "cdr" | "dcr" | "ellipse" | "indian_pines" | ...),
    metric ("rel_err" | "accuracy"), loss, levels,
    default_methods, default_seeds

and the tables ``[data]``, ``[model]``, ``[train]`` (α_W, α_θ, α_θ factor per level, regulariser)
and ``[methods.NAME]`` (the method's config fields, gnvpro_experiments.train; ``max_work`` is
the work-unit budget of one level; a method may override levels, model, alpha_w, alpha_theta
and, for stochastic methods, give epochs instead). Unknown keys and wrong types are errors at
load time, naming the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gnvpro.autodiff import JVP_MODES
from gnvpro.methods import FirstOrder

from .errors import ExperimentError
from .selection import parse_seeds
from .train import METHODS, config_keys, make_config, solver_settings

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10: the same parser, from PyPI
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:  # the extra is missing: cli.main says what to install
        tomllib = None  # type: ignore[assignment]

__all__ = [
    "KNOWN_METHODS",
    "ExperimentConfig",
    "ExperimentError",
    "available_experiments",
    "load_config",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
# the methods: gnvpro_experiments.train.METHODS (a live view, so a registered method is known)
KNOWN_METHODS = METHODS.keys()


def _sub_batch(method: str) -> bool:
    """The paper's stochastic scheme (fixed sub-batches)."""
    return METHODS[method].schedule == "sub-batches"


def _takes_epochs(method: str) -> bool:
    """Stochastic methods: the sub-batch scheme, ADAM and SGD (their budget may be epochs)."""
    return _sub_batch(method) or METHODS[method].cls is FirstOrder


def _gauss_newton(method: str) -> bool:
    """The methods that take Jacobian-vector products J_Z v (a jvp_mode setting)."""
    return "jvp_mode" in {f.name for f in dataclasses.fields(METHODS[method].config_type)}
METRICS = ("rel_err", "accuracy")
REGULARIZERS = ("identity", "time_smoothness")

_MODEL_KEYS = {
    "resnet": {"kind", "width", "n_nodes", "T", "n_steps", "open_bias", "steps_follow_grid"},
    "mlp": {"kind", "hidden", "activation", "out_features"},
    "cnn": {"kind", "dtype"},
}
_TRAIN_KEYS = {"alpha_w", "alpha_theta", "alpha_theta_factor", "regularizer"}
_TOP_KEYS = {
    "name", "problem", "metric", "loss", "levels", "default_methods", "default_seeds",
    "description", "data", "model", "train", "methods", "max_seconds", "threads",
}
# besides its method's config fields (gnvpro_experiments.train.config_keys), a [methods.NAME]
# table may set the budget:
_BUDGET_KEYS = ("max_work", "max_iter", "epochs")
# per-method overrides of the experiment's settings ("one level with its own model settings"):
# levels, model (a table of [model] keys), alpha_w, alpha_theta; epochs (stochastic methods:
# ADAM/SGD max_work = 2 * epochs, the sub-batch methods' epochs)
_OVERRIDE_KEYS = {"levels", "model", "alpha_w", "alpha_theta", "epochs"}


def _frozen(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment, as read from its TOML file (immutable)."""

    name: str
    problem: str
    metric: str
    loss: str
    levels: int
    data: Mapping[str, Any]
    model: Mapping[str, Any]
    alpha_w: float
    alpha_theta: float
    alpha_theta_factor: float = 0.5
    regularizer: str = "identity"
    methods: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: _frozen({}))
    default_methods: tuple[str, ...] = ()
    default_seeds: str = "0"
    description: str = ""
    max_seconds: float | None = None  # equal-wall-time runs: seconds per run, split over levels
    threads: int = 1  # torch intra-op threads `gnvpro run` uses unless --threads says otherwise
    source: str = ""

    # ------------------------------------------------------------------------------------------
    def method_settings(self, method: str, level: int, budget_scale: float = 1.0) -> dict:
        """The settings (gnvpro_experiments.train.train) of ``method`` at ``level`` (1-based). With
        max_seconds set, each level's budget is its share of those seconds, not work."""
        if method not in self.methods:
            raise ExperimentError(
                f"method {method!r} is not configured for experiment {self.name!r}; "
                f"configured: {', '.join(self.methods)}"
            )
        kw = {
            k: (dict(v) if isinstance(v, Mapping) else v) for k, v in self.methods[method].items()
            if k not in _OVERRIDE_KEYS
        }
        over = self.methods[method]
        if "epochs" in over:
            epochs = int(over["epochs"])
            if _sub_batch(method):
                kw["epochs"] = epochs
                kw.setdefault("max_work", 1e12)  # the epochs are the budget
                if budget_scale != 1.0 and kw.get("max_iter") is None:
                    # scale the number of outer iterations (epochs x batches x iterations)
                    n_it = epochs * int(kw.get("n_batches", 4)) * int(
                        kw.get("iters_per_batch", METHODS[method].iters))
                    kw["max_iter"] = max(1, round(n_it * budget_scale))
                    budget_scale = 1.0  # already applied
            else:
                kw["max_work"] = 2.0 * epochs  # 2 work units per epoch (ADAM, SGD)
        if "max_work" in kw:
            kw["max_work"] = float(kw["max_work"]) * budget_scale
        if kw.get("max_iter") is not None:
            kw["max_iter"] = max(1, round(int(kw["max_iter"]) * budget_scale))
            kw.setdefault("max_work", 1e12)  # the iteration count is the budget
        if self.max_seconds is not None:  # equal wall time: seconds replace the other budgets
            share = self.max_seconds / self.method_levels(method)
            kw.update(max_seconds=share, max_work=1e12, max_iter=None)
            if _sub_batch(method):
                kw["epochs"] = 10**6
        alpha_theta = float(over.get("alpha_theta", self.alpha_theta))
        kw.update(
            loss=self.loss,
            alpha_w=float(over.get("alpha_w", self.alpha_w)),
            alpha_theta=alpha_theta * self.alpha_theta_factor ** (level - 1),
        )
        return kw

    def method_levels(self, method: str) -> int:
        """The number of levels of ``method`` (its own ``levels``, else the experiment's)."""
        return int(self.methods.get(method, {}).get("levels", self.levels))

    def method_model(self, method: str) -> dict:
        """The [model] table of ``method`` (the experiment's, updated by its own ``model``)."""
        return {**self.model, **dict(self.methods.get(method, {}).get("model", {}))}

    def with_epochs(self, epochs: int | None) -> ExperimentConfig:
        """Set ``epochs`` of every stochastic method (ADAM, SGD, the sub-batch methods)."""
        if epochs is None:
            return self
        if epochs < 1:
            raise ExperimentError(f"--epochs must be >= 1, got {epochs}")
        methods = {}
        for m, st in self.methods.items():
            st = dict(st)
            if _takes_epochs(m):
                st.pop("max_work", None)
                st.pop("max_iter", None)
                st["epochs"] = int(epochs)
            methods[m] = _frozen(st)
        return dataclasses.replace(self, methods=_frozen(methods))

    def with_jvp_mode(self, mode: str | None) -> ExperimentConfig:
        """Set ``jvp_mode`` (gnvpro.autodiff.JVP_MODES) of every Gauss-Newton method."""
        if mode is None:
            return self
        if mode not in JVP_MODES:
            raise ExperimentError(f"--jvp-mode must be one of {', '.join(JVP_MODES)}, got "
                                  f"{mode!r}")
        methods = {m: _frozen({**st, "jvp_mode": mode}) if _gauss_newton(m) else st
                   for m, st in self.methods.items()}
        return dataclasses.replace(self, methods=_frozen(methods))

    def with_data(self, **updates: Any) -> ExperimentConfig:
        """Override [data] keys (None values are ignored), e.g. ``subset`` for image data."""
        upd = {k: v for k, v in updates.items() if v is not None}
        if not upd:
            return self
        from .problems.registry import get_problem, names

        bad = sorted(set(upd) - get_problem(self.problem).data_keys)
        if bad:
            raise ExperimentError(
                f"experiment {self.name!r} has no data option {', '.join(bad)}"
                + (f" (--subset is for {names(lambda p: 'subset' in p.data_keys)})"
                   if "subset" in bad else "")
            )
        for k, v in upd.items():
            if k.startswith("n") or k == "subset":
                _num("command line", k, v, positive=True, integer=True)
        return dataclasses.replace(self, data=_frozen({**self.data, **upd}))

    def with_levels(self, levels: int | None) -> ExperimentConfig:
        if levels is None:
            return self
        if levels < 1:
            raise ExperimentError(f"--levels must be >= 1, got {levels}")
        if levels > 1 and self.model.get("kind") != "resnet":
            raise ExperimentError(
                f"experiment {self.name!r}: multilevel training needs a resnet model"
            )
        return dataclasses.replace(self, levels=int(levels))

    def to_dict(self) -> dict:
        """The TOML-shaped document: ``config_from_dict(cfg.to_dict())`` rebuilds ``cfg``."""
        model = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.model.items()}
        return {
            "name": self.name, "problem": self.problem, "metric": self.metric, "loss": self.loss,
            "levels": self.levels, "description": self.description,
            "default_methods": list(self.default_methods), "default_seeds": self.default_seeds,
            "data": dict(self.data), "model": model,
            "train": {"alpha_w": self.alpha_w, "alpha_theta": self.alpha_theta,
                      "alpha_theta_factor": self.alpha_theta_factor,
                      "regularizer": self.regularizer},
            "methods": {k: {kk: (dict(vv) if isinstance(vv, Mapping) else vv)
                            for kk, vv in v.items()} for k, v in self.methods.items()},
            **({} if self.max_seconds is None else {"max_seconds": self.max_seconds}),
            **({} if self.threads == 1 else {"threads": self.threads}),
        }

    def with_settings(self, assignments: list[str] | None) -> ExperimentConfig:
        """Apply ``METHOD.KEY=VALUE`` assignments (VALUE a TOML value, else a string; KEY may
        be nested: ``gnvpro.search.rule.eta_expand=0.8``) to the [methods] tables; the result
        is validated like a loaded file (unknown keys and wrong types named)."""
        if not assignments:
            return self
        doc = self.to_dict()
        for a in assignments:
            key, sep, text = a.partition("=")
            path = [k.strip() for k in key.split(".")]
            if not sep or len(path) < 2 or not all(path):
                raise ExperimentError(f"--set {a!r}: expected METHOD.KEY=VALUE, e.g. "
                                      "gnvpro.descent.max_products=30")
            if path[0] not in doc["methods"]:
                raise ExperimentError(f"--set {a!r}: method {path[0]!r} is not configured for "
                                      f"experiment {self.name!r}; configured: "
                                      f"{', '.join(doc['methods'])}")
            try:
                value = tomllib.loads(f"v = {text}")["v"]
            except tomllib.TOMLDecodeError:
                value = text.strip()
            table = doc["methods"][path[0]]
            for k in path[1:-1]:
                table = table.setdefault(k, {})
                if not isinstance(table, dict):
                    raise ExperimentError(f"--set {a!r}: {k} is not a table")
            if path[-1] == "kind" and table.get("kind", value) != value:
                table.clear()  # another descent or search: its own defaults
            table[path[-1]] = value
        cfg = config_from_dict(doc, "--set")
        return dataclasses.replace(cfg, source=self.source)

    def with_max_seconds(self, seconds: float | None) -> ExperimentConfig:
        """Every run gets `seconds` of training (equal shares per level) instead of its work
        budget: the equal-wall-time comparison."""
        if seconds is None:
            return self
        if not (isinstance(seconds, int | float) and 0 < seconds < float("inf")):
            raise ExperimentError(f"--max-seconds must be a positive number, got {seconds!r}")
        return dataclasses.replace(self, max_seconds=float(seconds))


# ----------------------------------------------------------------------------------------------
def available_experiments() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def method_keys(method: str) -> set[str]:
    """Every key a [methods.NAME] table may hold: the method's config fields, the budget, the
    schedule (sub-batch methods) and the per-method overrides."""
    return config_keys(method) | set(_BUDGET_KEYS) | _OVERRIDE_KEYS


def _check_keys(where: str, got: Mapping[str, Any], allowed: set[str], src: str) -> None:
    bad = sorted(set(got) - allowed)
    if bad:
        raise ExperimentError(
            f"{src}: unknown key(s) {', '.join(bad)} in {where}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )


def _num(src: str, key: str, v: Any, *, positive: bool = False, integer: bool = False) -> Any:
    ok = isinstance(v, int) if integer else isinstance(v, int | float)
    if isinstance(v, bool) or not ok:
        raise ExperimentError(f"{src}: {key} must be {'an integer' if integer else 'a number'}, "
                              f"got {v!r}")
    if positive and not v > 0:
        raise ExperimentError(f"{src}: {key} must be > 0, got {v!r}")
    if not positive and v < 0:
        raise ExperimentError(f"{src}: {key} must be >= 0, got {v!r}")
    return v


def _check_method_settings(src: str, method: str, settings: Mapping[str, Any]) -> None:
    """Refuse, at load time and naming the key, a setting the method's config refuses (each
    key alone, then all together; keys that are not config fields are checked elsewhere)."""
    solver = {k: v for k, v in settings.items() if k in ("descent", "search")}
    for k, v in settings.items():
        try:  # a descent is checked with its search (a pair must fit)
            make_config(method, solver if k in solver else {k: v})
        except (TypeError, ValueError) as e:
            raise ExperimentError(f"{src}: methods.{method}.{k}: {e}") from None
    try:
        make_config(method, settings)
    except (TypeError, ValueError) as e:
        raise ExperimentError(f"{src}: [methods.{method}]: {e}") from None


def load_config(name_or_path: str | Path) -> ExperimentConfig:
    """Load an experiment by name (``cdr``, ``dcr``, ``ellipse``) or from a TOML file path."""
    s = str(name_or_path)
    path = Path(s)
    if not (s.endswith(".toml") or path.is_file()):
        path = CONFIG_DIR / f"{s}.toml"
        if not path.is_file():
            raise ExperimentError(
                f"unknown experiment {s!r}; available: {', '.join(available_experiments())} "
                "(or give the path of a .toml file)"
            )
    elif not path.is_file():
        raise ExperimentError(f"experiment config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ExperimentError(f"{path}: invalid TOML: {e}") from None
    return config_from_dict(raw, str(path))


def _upgrade(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """Read method tables of earlier versions (run directories keep their config.json):
    ``lbfgs_memory`` is now ``memory``, the keys of an ``extra`` table are plain keys, and the
    flat solver keys (max_krylov, subproblem, ...) are ``descent`` and ``search`` tables
    (gnvpro_experiments.train.solver_settings, which writes both out in full)."""
    methods = raw.get("methods")
    if not isinstance(methods, Mapping):
        return raw
    new = {}
    for m, st in methods.items():
        if isinstance(st, Mapping) and ("lbfgs_memory" in st or "extra" in st):
            st = {**{k: v for k, v in st.items() if k not in ("lbfgs_memory", "extra")},
                  **({"memory": st["lbfgs_memory"]} if "lbfgs_memory" in st else {}),
                  **dict(st.get("extra") or {})}
            st.pop("head", None)
        if isinstance(st, Mapping) and m in METHODS:
            st = solver_settings(m, st)
        new[m] = st
    return {**raw, "methods": new}


def config_from_dict(raw: Mapping[str, Any], src: str = "<dict>") -> ExperimentConfig:
    """Validate a parsed TOML document and build the :class:`ExperimentConfig`."""
    raw = _upgrade(raw)
    _check_keys("the top level", raw, _TOP_KEYS, src)
    for key in ("name", "problem", "metric", "loss", "levels", "data", "model", "train", "methods"):
        if key not in raw:
            raise ExperimentError(f"{src}: missing required key {key!r}")
    from .problems.registry import PROBLEMS

    problem = raw["problem"]
    if not isinstance(problem, str) or problem not in PROBLEMS:
        raise ExperimentError(
            f"{src}: problem must be one of {', '.join(PROBLEMS)}, got {problem!r}"
        )
    metric = raw["metric"]
    if metric not in METRICS:
        raise ExperimentError(f"{src}: metric must be one of {', '.join(METRICS)}, got {metric!r}")
    levels = _num(src, "levels", raw["levels"], positive=True, integer=True)

    data = dict(raw["data"])
    _check_keys("[data]", data, set(PROBLEMS[problem].data_keys), src)
    for k, v in data.items():
        if k.startswith("n"):
            _num(src, f"data.{k}", v, positive=True, integer=True)

    model = dict(raw["model"])
    kind = model.get("kind")
    if kind not in _MODEL_KEYS:
        raise ExperimentError(f"{src}: model.kind must be one of {', '.join(_MODEL_KEYS)}, "
                              f"got {kind!r}")
    _check_keys("[model]", model, _MODEL_KEYS[kind], src)
    if kind == "resnet":
        for k in ("width", "n_nodes", "n_steps"):
            _num(src, f"model.{k}", model.get(k, 1), positive=True, integer=True)
        _num(src, "model.T", model.get("T", 1.0), positive=True)
    elif kind == "cnn":
        if model.get("dtype", "float32") not in ("float32", "float64"):
            raise ExperimentError(f"{src}: model.dtype must be float32 or float64")
        if levels > 1:
            raise ExperimentError(f"{src}: multilevel training (levels > 1) needs a resnet model")
    else:
        hidden = model.get("hidden")
        if not isinstance(hidden, list) or not hidden or not all(
            isinstance(h, int) and h > 0 for h in hidden
        ):
            raise ExperimentError(f"{src}: model.hidden must be a list of positive integers")
        model["hidden"] = tuple(hidden)
        if levels > 1:
            raise ExperimentError(f"{src}: multilevel training (levels > 1) needs a resnet model")

    train = dict(raw["train"])
    _check_keys("[train]", train, _TRAIN_KEYS, src)
    alpha_w = float(_num(src, "train.alpha_w", train.get("alpha_w", 1e-10)))
    alpha_theta = float(_num(src, "train.alpha_theta", train.get("alpha_theta", 1e-10)))
    factor = float(_num(src, "train.alpha_theta_factor", train.get("alpha_theta_factor", 0.5),
                        positive=True))
    reg = train.get("regularizer", "identity")
    if reg not in REGULARIZERS:
        raise ExperimentError(f"{src}: train.regularizer must be one of {', '.join(REGULARIZERS)}")

    methods_raw = raw["methods"]
    if not isinstance(methods_raw, Mapping) or not methods_raw:
        raise ExperimentError(f"{src}: [methods.NAME] tables are required")
    methods: dict[str, Mapping[str, Any]] = {}
    for m, settings in methods_raw.items():
        if m not in KNOWN_METHODS:
            raise ExperimentError(f"{src}: unknown method {m!r}; known: {', '.join(KNOWN_METHODS)}")
        _check_keys(f"[methods.{m}]", settings, method_keys(m), src)
        if "model" in settings:
            if not isinstance(settings["model"], Mapping):
                raise ExperimentError(f"{src}: methods.{m}.model must be a table")
            _check_keys(f"[methods.{m}.model]", settings["model"],
                        _MODEL_KEYS[kind] - {"kind"}, src)
            settings = {**settings, "model": _frozen(settings["model"])}
        if "levels" in settings:
            _num(src, f"methods.{m}.levels", settings["levels"], positive=True, integer=True)
        if "epochs" in settings and not _takes_epochs(m):
            raise ExperimentError(f"{src}: methods.{m}.epochs is only for "
                                  f"{', '.join(k for k in METHODS if _takes_epochs(k))}")
        _check_method_settings(src, m, settings)
        for k in ("n_batches", "iters_per_batch"):
            if k in settings:
                _num(src, f"methods.{m}.{k}", settings[k], positive=True, integer=True)
        if not isinstance(settings.get("keep_best_val", False), bool):
            raise ExperimentError(f"{src}: methods.{m}.keep_best_val must be true or false")
        if not any(k in settings for k in _BUDGET_KEYS):
            raise ExperimentError(f"{src}: [methods.{m}] needs max_work or max_iter (the budget)")
        for k in _BUDGET_KEYS:
            if k in settings:
                _num(src, f"methods.{m}.{k}", settings[k], positive=True, integer=k == "max_iter")
        methods[m] = _frozen(settings)

    default_methods = tuple(raw.get("default_methods", list(methods)))
    for m in default_methods:
        if m not in methods:
            raise ExperimentError(f"{src}: default method {m!r} has no [methods.{m}] table")
    default_seeds = str(raw.get("default_seeds", "0"))
    cfg = ExperimentConfig(
        name=str(raw["name"]), problem=problem, metric=metric, loss=str(raw["loss"]),
        levels=levels, data=_frozen(data), model=_frozen(model), alpha_w=alpha_w,
        alpha_theta=alpha_theta, alpha_theta_factor=factor, regularizer=reg,
        methods=_frozen(methods), default_methods=default_methods, default_seeds=default_seeds,
        description=str(raw.get("description", "")), source=src,
    )
    if "threads" in raw:
        cfg = dataclasses.replace(cfg, threads=int(_num(src, "threads", raw["threads"],
                                                            positive=True, integer=True)))
    if raw.get("max_seconds") is not None:
        cfg = cfg.with_max_seconds(_num(src, "max_seconds", raw["max_seconds"], positive=True))
    parse_seeds(default_seeds, cfg)
    return cfg
