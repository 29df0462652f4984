"""Tables and figures of a ``gnvpro run`` output directory.

    report(dir) -> markdown   (also written to DIR/report.md)

Figures (PNG, matplotlib Agg) in DIR: ``loss_vs_work.png`` and ``loss_vs_seconds.png`` (training
and validation loss, log y, each seed faint and the median bold, level starts dotted, the
reference GNvpro trajectory dashed where ``reference_history.json`` exists),
``val_METRIC_vs_work.png`` and ``val_METRIC_vs_seconds.png`` (the validation metric, e.g.
accuracy, of every method), and the figures of the experiment's problem (``Problem.figures``):
for the classification toy ``decision_boundary.png``; for Indian Pines ``segmentation.png``
(ground truth, predicted and error maps over all labelled pixels) and ``confusion.png``; for
CIFAR-10 and Fashion-MNIST ``confusion.png`` (class-normalised test-set confusion matrix of the
best-validation GNvpro run); for DCR ``dcr_patterns.png`` (true vs predicted 21 x 42
measurement patterns of 3 test samples, gnvpro, first seed).  Problems draw them with
:func:`pyplot`, :func:`best_run`, :func:`load_run`, :func:`predict_classes`,
:func:`confusion_matrix` and :func:`confusion_figure`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import ExperimentError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from .config import ExperimentConfig
    from .problems.base import Problem, Split

__all__ = [
    "best_run", "confusion_figure", "confusion_matrix", "load_histories", "load_run",
    "predict_classes", "pyplot", "report", "summary_table",
]

_COLUMNS = ("train", "val", "test", "work_units", "seconds", "inner_seconds")


def _fmt(vals: list[float], metric: bool) -> str:
    a = np.asarray([v for v in vals if v is not None and math.isfinite(v)], dtype=float)
    if a.size == 0:
        return "–"
    f = (lambda x: f"{x:.4g}") if metric else (lambda x: f"{x:.1f}")
    if a.size == 1:
        return f(a[0])
    return f"{f(a.mean())} ± {f(a.std(ddof=1))}"


def _read_json(path: Path, what: str) -> Any:
    """The JSON document at path; ExperimentError (one line) if it is unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExperimentError(f"{path}: unreadable {what} ({e}); rerun the experiment or move "
                              "the file away") from None


def _check_summary(summary: Any, path: Path) -> dict:
    """summary.json has the runner's schema: {"methods": {METHOD: [row, ...]}, ...}."""
    bad = None
    if not isinstance(summary, dict) or not isinstance(summary.get("methods"), dict):
        bad = 'it has no "methods" table'
    else:
        for m, rows in summary["methods"].items():
            if not isinstance(rows, list) or not all(
                isinstance(r, dict) and {"seed", *_COLUMNS} <= set(r) for r in rows
            ):
                bad = f"the rows of method {m!r} are not runs (seed, {', '.join(_COLUMNS)})"
                break
    if bad is not None:
        raise ExperimentError(f"{path} is not a gnvpro summary: {bad}; rerun the experiment")
    return summary


def summary_table(summary: dict) -> str:
    """Markdown table: mean ± std over seeds of every method's finals, WU, seconds."""
    metric = summary.get("metric", "metric")
    head = (f"| method | seeds | train {metric} | val {metric} | test {metric} | work units | "
            "seconds | inner seconds |")
    lines = [head, "|" + "---|" * 8]
    for method, rows in summary.get("methods", {}).items():
        cells = [_fmt([r[c] for r in rows], c in ("train", "val", "test")) for c in _COLUMNS]
        lines.append(f"| {method} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_histories(root: Path, method: str) -> dict[str, list[dict]]:
    """{seed label: records} of one method."""
    out = {}
    for d in sorted((root / method).glob("seed-*")):
        f = d / "history.jsonl"
        if f.is_file():
            out[d.name] = _read_history(f)
    return out


def _read_history(f: Path) -> list[dict]:
    recs = []
    for i, line in enumerate(f.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ExperimentError(f"{f}, line {i}: corrupt record ({e}); rerun that run or "
                                  "move its directory away") from None
        if not isinstance(rec, dict):
            raise ExperimentError(f"{f}, line {i}: not a training record")
        recs.append(rec)
    return recs


def _load_model_file(model: Any, path: Path) -> None:
    """model.load_state_dict(torch.load(path, weights_only=True)), with one-line errors."""
    import torch

    try:
        model.load_state_dict(torch.load(path, weights_only=True))
    except Exception as e:  # corrupt, truncated, unsafe or of another architecture
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExperimentError(f"{path}: cannot load the model ({msg}); rerun that run") from None


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (the figures are files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(recs: list[dict], xkey: str, which: str,
            metric: str = "loss") -> tuple[np.ndarray, np.ndarray]:
    """(x, y): the training objective (which="train") or a validation metric (which="val")."""
    xs, ys = [], []
    for r in recs:
        if which == "train":
            y = r.get("loss")
        else:
            y = (r.get("metrics") or {}).get("val", {}).get(metric)
        x = r.get(xkey)
        if x is None or y is None:
            continue
        xs.append(float(x))
        ys.append(float(y))
    x, y = np.asarray(xs), np.asarray(ys)
    ok = np.isfinite(x) & np.isfinite(y) & (y > 0)
    return x[ok], y[ok]


def _median_curve(curves: list[tuple[np.ndarray, np.ndarray]]):
    curves = [c for c in curves if len(c[0]) > 1]
    if len(curves) < 2:
        return None
    hi = min(c[0].max() for c in curves)
    lo = max(c[0].min() for c in curves)
    if not hi > lo:
        return None
    grid = np.linspace(lo, hi, 200)
    logs = [np.interp(grid, x, np.log(y)) for x, y in curves]
    return grid, np.exp(np.median(np.stack(logs), axis=0))


def _plot_seeds(ax, curves: list[tuple[np.ndarray, np.ndarray]], col: str, method: str) -> None:
    """Every seed's curve thin, their median bold (a single seed: bold, labelled); a curve of
    one point is drawn as a dot."""
    med = _median_curve(curves)
    for j, (x, y) in enumerate(curves):
        single = med is None and j == 0
        ax.plot(x, y, color=col, lw=2 if single else 0.8, alpha=1 if single else 0.3,
                label=method if single else None, marker="o" if len(x) == 1 else None)
    if med is not None:
        ax.plot(*med, color=col, lw=2.2, label=f"{method} (median of {len(curves)})")


def _convergence_figure(root: Path, methods: list[str], xkey: str, ref: dict | None) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, method in enumerate(methods):
        col = colors[i % len(colors)]
        hists = load_histories(root, method)
        for ax, which in zip(axes, ("train", "val"), strict=True):
            _plot_seeds(ax, [_series(recs, xkey, which) for recs in hists.values()], col, method)
        # level starts of the first seed, dotted in the method's colour
        first = next(iter(hists.values()), [])
        starts = [r[xkey] for r in first if r.get("level_start") and r.get("level", 1) > 1]
        for ax in axes:
            for s in starts:
                ax.axvline(float(s), color=col, ls=":", lw=1, alpha=0.7)
    if ref is not None and xkey == "work_units":
        for ax, key in zip(axes, ("loss", "val_loss"), strict=True):
            ax.plot(ref["work_units"], ref[key], "k--", marker=".", ms=4, lw=1.2,
                    label="GNvpro reference (Meganet.m)")
            for s in ref.get("level_starts", [])[1:]:
                ax.axvline(float(s), color="k", ls=":", lw=0.8, alpha=0.5)
    xlabel = "work units" if xkey == "work_units" else "seconds"
    for ax, title in zip(axes, ("training objective Φ", "validation loss"), strict=True):
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.25)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{root.name}: loss vs {xlabel} (dotted: level starts)")
    fig.tight_layout()
    path = root / ("loss_vs_work.png" if xkey == "work_units" else "loss_vs_seconds.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _metric_figure(root: Path, methods: list[str], metric: str, xkey: str) -> Path:
    """``val_METRIC_vs_work.png`` (``xkey`` "work_units", linear x) or
    ``val_METRIC_vs_seconds.png`` (``xkey`` "seconds", log x): the validation metric of every
    method on one axis, each seed thin, the median over seeds bold."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, method in enumerate(methods):
        col = colors[i % len(colors)]
        _plot_seeds(ax, [_series(recs, xkey, "val", metric)
                         for recs in load_histories(root, method).values()], col, method)
    if metric == "rel_err":
        ax.set_yscale("log")
    work = xkey == "work_units"
    if not work:
        ax.set_xscale("log")
    ax.set_xlabel("work units (cumulative)" if work else "seconds (wall clock, training only)")
    ax.set_ylabel(f"validation {metric}")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    what = "work units" if work else "seconds"
    ax.set_title(f"{root.parent.name}/{root.name}: validation {metric} vs {what}")
    fig.tight_layout()
    path = root / f"val_{metric}_vs_{'work' if work else 'seconds'}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _problem_of(root: Path, methods: list[str]) -> str | None:
    for m in methods:
        for d in sorted((root / m).glob("seed-*")):
            f = d / "config.json"
            if f.is_file():
                info = _read_json(f, "run config")
                exp = info.get("experiment") if isinstance(info, dict) else None
                if not isinstance(exp, dict):
                    raise ExperimentError(f"{f}: not a gnvpro run config (no \"experiment\")")
                return exp.get("problem")
    return None


def _registered(name: str | None) -> Problem | None:
    """The registered problem ``name``; None if there is none of that name."""
    from .problems.registry import PROBLEMS

    return PROBLEMS.get(name) if isinstance(name, str) else None


def load_run(d: Path, method: str) -> tuple[ExperimentConfig, dict, Split, nn.Sequential]:
    """(cfg, info (its config.json), data split, final model with model.pt loaded, in eval mode)
    of the run directory ``d`` of ``method``."""
    from .config import config_from_dict
    from .data import _data_errors, build_data, build_final_model, load_problem_data

    info = _read_json(d / "config.json", "run config")
    cfg = config_from_dict(info["experiment"], str(d / "config.json"))
    with _data_errors(f"{d}: the run's data cannot be rebuilt for its figures"):
        raw = load_problem_data(cfg, info.get("data_path"), progress=False)
        data = build_data(cfg, raw, info["seed"])
    model = build_final_model(cfg, data, info["seed"], method)
    _load_model_file(model, d / "model.pt")
    model.eval()
    return cfg, info, data, model


def _is_gnvpro(method: str) -> bool:
    """Whether ``method`` is one of the GNvpro methods (gnvpro, gnvpro-stochastic, ...)."""
    return method == "gnvpro" or method.startswith("gnvpro-")


def best_run(root: Path, summary: dict) -> tuple[str, Path] | None:
    """(method, run directory) of the run with the best final validation metric among the runs
    of the GNvpro methods (``gnvpro``, ``gnvpro-*``) that saved a model; if none did, among
    all methods' runs.  Ties go to the method listed first, then to the first seed.  None if
    no run has a model."""
    higher = summary.get("metric") == "accuracy"
    runs = [(m, r) for m, rows in summary.get("methods", {}).items() for r in rows
            if (root / m / f"seed-{r['seed']}" / "model.pt").is_file()]
    pool = [x for x in runs if _is_gnvpro(x[0])] or runs
    if not pool:
        return None

    def score(run: tuple[str, dict]) -> float:  # a NaN / missing metric ranks last
        v = run[1].get("val")
        ok = isinstance(v, int | float) and math.isfinite(v)
        return (float(v) if higher else -float(v)) if ok else -math.inf

    m, r = max(pool, key=score)
    return m, root / m / f"seed-{r['seed']}"


def predict_classes(model: nn.Module, x: Tensor, batch: int = 500) -> np.ndarray:
    """The predicted class (argmax of the outputs) of every row of ``x``, as an int64 NumPy
    array; ``model`` runs without gradients on ``batch`` rows at a time, each cast to the
    model's dtype, so memory stays bounded whatever ``len(x)``."""
    import torch

    dtype = next(model.parameters()).dtype
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(model(x[i : i + batch].to(dtype)).argmax(dim=1).cpu())
    if not out:
        return np.zeros(0, dtype=np.int64)
    return torch.cat(out).numpy().astype(np.int64)


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int,
                     normalise: bool = True) -> np.ndarray:
    """The (n_classes, n_classes) confusion matrix: entry (i, j) counts the samples of true
    class i predicted as class j.  ``normalise``: each row divided by its count (the fraction
    of class i predicted as j; the diagonal is the per-class accuracy, a row sums to 1), rows of
    classes without samples left 0."""
    t = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"{t.size} true labels but {p.size} predictions")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise ValueError(f"class indices must lie in 0..{n_classes - 1}")
    cm = np.zeros((n_classes, n_classes))
    np.add.at(cm, (t, p), 1.0)
    if normalise:
        cm /= np.maximum(cm.sum(axis=1, keepdims=True), 1.0)
    return cm


def confusion_figure(path: Path, cm: np.ndarray, names: list[str], title: str) -> Path:
    """Draw the row-normalised confusion matrix ``cm`` (:func:`confusion_matrix`) with the
    class ``names`` on both axes (true class down, predicted across) and every entry of at
    least 0.005 written in its cell; save it to ``path`` and return ``path``."""
    plt = pyplot()
    k = len(names)
    many = k > 12
    fig, ax = plt.subplots(figsize=(9, 8) if many else (8, 7))
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if cm[i, j] >= 0.005:
                ax.text(j, i, f"{cm[i, j]:.2f}", ha="center", va="center",
                        fontsize=6 if many else 9, color="white" if cm[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), names, rotation=90 if many else 45, fontsize=7 if many else 9,
                  ha="center" if many else "right")
    ax.set_yticks(range(k), names, fontsize=7 if many else 9)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _history_state(f: Path) -> str | None:
    """'no records', 'only non-finite losses' or None (a usable history) of a history.jsonl."""
    try:
        recs = _read_history(f) if f.is_file() else []
    except ExperimentError as e:
        return str(e)
    if not recs:
        return "no records"
    losses = [r.get("loss") for r in recs]
    if not any(isinstance(v, int | float) and math.isfinite(v) for v in losses):
        return "only non-finite losses"
    return None


def run_notes(root: Path, summary: dict) -> list[str]:
    """One line per run directory that is not a usable row of the table: a run in progress or
    killed (no final.json; with or without a checkpoint), or a finished run whose history is
    empty or all NaN (its curves are left out of the figures)."""
    lines = []
    for d in sorted(root.glob("*/seed-*")):
        if not d.is_dir():
            continue
        name = f"{d.parent.name} {d.name}"
        state = _history_state(d / "history.jsonl")
        if not (d / "final.json").is_file():
            ck = "a checkpoint to --resume from" if (d / "checkpoint.pt").is_file() else \
                "no checkpoint yet"
            n = 0 if state == "no records" else len(_safe_lines(d / "history.jsonl"))
            lines.append(f"- {name}: not finished (in progress or killed; {n} records, {ck})")
        elif state is not None:
            lines.append(f"- {name}: finished, but its history has {state} (no curves)")
    return lines


def _safe_lines(f: Path) -> list[str]:
    try:
        return [x for x in f.read_text().splitlines() if x.strip()]
    except OSError:
        return []


def report(dir: str | Path) -> str:
    """Write DIR/report.md and the PNG figures; return the markdown."""
    root = Path(dir).expanduser()
    sfile = root / "summary.json"
    if not sfile.is_file():
        pending = [str(d.relative_to(root)) for d in sorted(root.glob("*/seed-*"))
                   if d.is_dir() and not (d / "final.json").is_file()] if root.is_dir() else []
        if pending:
            raise ExperimentError(f"no summary.json in {root}: no run has finished yet "
                                  f"({len(pending)} in progress or killed: "
                                  f"{', '.join(pending[:4])}{' ...' if len(pending) > 4 else ''})"
                                  "; report again when one has")
        raise ExperimentError(f"no summary.json in {root} (run `gnvpro run ... --out {root}`)")
    summary = _check_summary(_read_json(sfile, "summary"), sfile)
    methods = list(summary["methods"])
    ref = None
    rfile = root / "reference_history.json"
    if rfile.is_file():
        ref = _read_json(rfile, "reference history")
        if not isinstance(ref, dict) or not {"work_units", "loss", "val_loss"} <= set(ref):
            raise ExperimentError(f"{rfile} is not a reference history (work_units, loss, "
                                  "val_loss): rerun with --seeds ref or move it away")
    figs = [_convergence_figure(root, methods, "work_units", ref),
            _convergence_figure(root, methods, "seconds", None),
            *(_metric_figure(root, methods, str(summary.get("metric", "rel_err")), xkey)
              for xkey in ("work_units", "seconds"))]
    notes: list[str] = []
    problem = _registered(_problem_of(root, methods))
    if problem is not None:
        try:
            more, note = problem.figures(root, summary)
        except ExperimentError as e:  # one run's files: the rest of the report still stands
            more, note = [], f"The {problem.name} figures could not be drawn: {e}\n"
        figs += more
        if note:
            notes.append(note)
    parts = [f"# {summary.get('experiment', root.name)}: results\n",
             f"metric: {summary.get('metric')} (final model), mean ± std over seeds; work units "
             "and seconds cumulative over all levels.\n", summary_table(summary), ""]
    if ref is not None and "finals" in ref:
        f = ref["finals"]
        parts.append(f"Reference GNvpro (Meganet.m, seed ref): rel_err train {f['train']:.4g}, "
                     f"val {f['val']:.4g}, test {f['test']:.4g}, "
                     f"{ref['work_units'][-1]:.0f} work units.\n")
    parts += notes
    pending = run_notes(root, summary)
    if pending:
        parts += ["## Runs not in the table or the figures\n", *pending, ""]
    parts.append("## Figures\n")
    parts += [f"![{p.stem}]({p.name})" for p in figs]
    md = "\n".join(parts) + "\n"
    (root / "report.md").write_text(md)
    return md
