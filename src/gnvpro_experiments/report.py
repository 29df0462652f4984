"""Tables and figures of a ``gnvpro run`` output directory.

    report(dir) -> markdown   (also written to DIR/report.md)

Figures (PNG, matplotlib Agg) in DIR: ``loss_vs_work.png`` and ``loss_vs_seconds.png`` (training
and validation loss, log y, each seed faint and the median bold, level starts dotted, the
reference GNvpro trajectory dashed where ``reference_history.json`` exists) and, for the
classification toy, ``decision_boundary.png``; for Indian Pines ``segmentation.png`` (ground
truth, predicted and error maps over all labelled pixels) and ``confusion.png`` (class-normalised
confusion matrix) of the best-validation gnvpro run; for DCR ``dcr_patterns.png`` (true vs
predicted 21 x 42 measurement patterns of 3 test samples, gnvpro, first seed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .config import ExperimentError

__all__ = ["load_histories", "report", "summary_table"]

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
    """Every seed's curve thin, their median bold (a single seed: bold, labelled)."""
    med = _median_curve(curves)
    for j, (x, y) in enumerate(curves):
        single = med is None and j == 0
        ax.plot(x, y, color=col, lw=2 if single else 0.8, alpha=1 if single else 0.3,
                label=method if single else None)
    if med is not None:
        ax.plot(*med, color=col, lw=2.2, label=f"{method} (median of {len(curves)})")


def _convergence_figure(root: Path, methods: list[str], xkey: str, ref: dict | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def _metric_vs_seconds_figure(root: Path, methods: list[str], metric: str) -> Path:
    """The validation metric of every method against wall-clock seconds, on one axis (each
    seed thin, the median over seeds bold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, method in enumerate(methods):
        col = colors[i % len(colors)]
        _plot_seeds(ax, [_series(recs, "seconds", "val", metric)
                         for recs in load_histories(root, method).values()], col, method)
    if metric == "rel_err":
        ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlabel("seconds (wall clock, training only)")
    ax.set_ylabel(f"validation {metric}")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    ax.set_title(f"{root.parent.name}/{root.name}: validation {metric} vs seconds")
    fig.tight_layout()
    path = root / f"val_{metric}_vs_seconds.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _decision_boundary_figure(root: Path, methods: list[str]) -> Path | None:
    """Ellipse toy: the predicted class regions of the first seed of every method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from .config import config_from_dict
    from .data import build_data, build_model

    runs = []
    for m in methods:
        seeds = sorted((root / m).glob("seed-*"))
        if seeds and (seeds[0] / "model.pt").is_file() and (seeds[0] / "config.json").is_file():
            runs.append((m, seeds[0]))
    if not runs:
        return None
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4.2), squeeze=False)
    gx, gy = np.meshgrid(np.linspace(-2.2, 2.2, 220), np.linspace(-1.0, 1.0, 120))
    grid = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], axis=1), dtype=torch.float64)
    for ax, (method, d) in zip(axes[0], runs, strict=True):
        info = _read_json(d / "config.json", "run config")
        cfg = config_from_dict(info["experiment"], str(d / "config.json"))
        seed = info["seed"]
        data = build_data(cfg, None, seed)
        model = build_model(cfg, data, seed)
        _load_model_file(model, d / "model.pt")
        with torch.no_grad():
            s = model(grid)[:, 0].numpy().reshape(gx.shape)
            pred = (model(data.x_test)[:, 0] > 0).long()
        acc = float((pred == data.y_test).double().mean())
        ax.contourf(gx, gy, (s > 0).astype(float), levels=[-0.5, 0.5, 1.5],
                    colors=["#f4c7a1", "#a9c8f0"], alpha=0.8)
        ax.contour(gx, gy, s, levels=[0.0], colors="k", linewidths=1.5)
        x, y = data.x_test[:800].numpy(), data.y_test[:800].numpy()
        ax.scatter(x[y == 1, 0], x[y == 1, 1], s=3, c="tab:blue", label="inside (1)")
        ax.scatter(x[y == 0, 0], x[y == 0, 1], s=3, c="tab:orange", label="ring (0)")
        t = np.linspace(0, 2 * np.pi, 300)
        ax.plot(np.cos(t), 0.4 * np.sin(t), "k:", lw=1, label="true boundary")
        ax.set_title(f"{method}, {d.name}: test accuracy {acc:.4f}")
        ax.set_aspect("equal")
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path = root / "decision_boundary.png"
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


def _load_run(d: Path, method: str):
    """(cfg, info, data split, final model with model.pt loaded) of one run directory."""
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


def _best_run(root: Path, summary: dict) -> tuple[str, Path] | None:
    """The gnvpro run (else the first method's) of the seed with the best validation metric."""
    methods = list(summary.get("methods", {}))
    order = (["gnvpro"] if "gnvpro" in methods else []) + [m for m in methods if m != "gnvpro"]
    higher = summary.get("metric") == "accuracy"
    for m in order:
        rows = [r for r in summary["methods"][m]
                if (root / m / f"seed-{r['seed']}" / "model.pt").is_file()]
        if rows:
            best = (max if higher else min)(rows, key=lambda r: r["val"])
            return m, root / m / f"seed-{best['seed']}"
    return None


def _indian_pines_figures(root: Path, summary: dict) -> tuple[list[Path], str] | None:
    """Ground truth, predicted and error maps over all labelled pixels; confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from .data import _data_errors, predict
    from .problems.indian_pines import all_labelled_pixels

    best = _best_run(root, summary)
    if best is None:
        return None
    method, d = best
    cfg, info, data, model = _load_run(d, method)
    with _data_errors(f"{d}: the Indian Pines pixels cannot be read for the segmentation"):
        x, y, pix = all_labelled_pixels(info.get("data_path"))
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        pred = predict(model, x.to(dtype)).argmax(dim=1).numpy()
    y = y.numpy()
    shape = tuple(data.meta.get("image_shape", (145, 145)))
    names = list(data.meta.get("class_names", [str(i) for i in range(int(y.max()) + 1)]))
    k = len(names)
    gt = np.zeros(shape[0] * shape[1], dtype=int)
    pm = np.zeros_like(gt)
    gt[pix], pm[pix] = y + 1, pred + 1
    err = np.full(gt.shape, np.nan)
    err[pix] = (pred != y).astype(float)
    acc = float((pred == y).mean())
    test_pix = set(np.asarray(info["split"].get("test_index", []), dtype=np.int64).tolist())

    cmap = plt.get_cmap("tab20", k)
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.4), constrained_layout=True)
    for ax, img, title in ((axes[0], gt, "ground truth"),
                           (axes[1], pm, f"predicted ({method}, {d.name})")):
        im = ax.imshow(np.ma.masked_equal(img.reshape(shape), 0), cmap=cmap, vmin=0.5,
                       vmax=k + 0.5, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    cb = fig.colorbar(im, ax=axes[1], fraction=0.05, ticks=range(1, k + 1))
    cb.ax.set_yticklabels(names, fontsize=6)
    axes[2].imshow(err.reshape(shape), cmap="RdYlGn_r", vmin=0, vmax=1, interpolation="nearest")
    axes[2].set_title(f"errors (red), all labelled pixels: accuracy {acc:.4f}")
    axes[2].axis("off")
    p1 = root / "segmentation.png"
    fig.savefig(p1, dpi=110, bbox_inches="tight")
    plt.close(fig)

    cm = np.zeros((k, k))
    np.add.at(cm, (y, pred), 1.0)
    cmn = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1.0)
    fig, ax = plt.subplots(figsize=(9, 8))
    im = ax.imshow(cmn, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if cmn[i, j] >= 0.005:
                ax.text(j, i, f"{cmn[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if cmn[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), names, rotation=90, fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"confusion matrix (rows normalised), all labelled pixels, {method} {d.name}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    p2 = root / "confusion.png"
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    in_test = np.isin(pix, np.fromiter(test_pix, dtype=np.int64)) if test_pix else None
    test_acc = float((pred[in_test] == y[in_test]).mean()) if in_test is not None else math.nan
    note = (f"Segmentation maps and confusion matrix: {method}, {d.name} (best validation "
            f"accuracy); accuracy over all {len(y)} labelled pixels {acc:.4f} "
            f"(test pixels {test_acc:.4f}).\n")
    return [p1, p2], note


def _dcr_pattern_figure(root: Path, methods: list[str]) -> tuple[Path, str] | None:
    """True vs predicted measurement patterns (21 sources x 42 receivers) of 3 test samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from .data import predict

    method = "gnvpro" if "gnvpro" in methods else (methods[0] if methods else None)
    if method is None:
        return None
    seeds = sorted((root / method).glob("seed-*"))
    seeds = [d for d in seeds if (d / "model.pt").is_file() and (d / "config.json").is_file()]
    if not seeds:
        return None
    d = seeds[0]
    try:
        cfg, info, data, model = _load_run(d, method)
    except (FileNotFoundError, ExperimentError):
        return None  # the data cannot be rebuilt here: no pattern figure
    with torch.no_grad():
        S = predict(model, data.x_test[:3]).double().numpy()
    T = data.y_test[:3].double().numpy()
    mean = (data.meta or {}).get("target_mean")
    centred = mean is None or not np.any(np.asarray(mean))
    rels = np.linalg.norm(S - T, axis=1) / np.maximum(np.linalg.norm(T, axis=1), 1e-300)
    if not centred:
        S, T = S + np.asarray(mean)[None], T + np.asarray(mean)[None]
    n_meas = T.shape[1]
    shape = (21, 42) if n_meas == 21 * 42 else (1, n_meas)
    fig, axes = plt.subplots(3, 2, figsize=(10, 7.5), squeeze=False)
    for i in range(min(3, len(T))):
        lo, hi = float(min(T[i].min(), S[i].min())), float(max(T[i].max(), S[i].max()))
        rel = float(rels[i])  # on the centred targets, as the rel_err metric
        for j, (img, what) in enumerate(((T[i], "true"), (S[i], "predicted"))):
            im = axes[i][j].imshow(img.reshape(shape), aspect="auto", cmap="viridis", vmin=lo,
                                   vmax=hi, interpolation="nearest")
            axes[i][j].set_title(f"test sample {i}: {what}" + (f" (centred rel. err {rel:.3g})"
                                                               if j else ""), fontsize=9)
            axes[i][j].set_xlabel("receiver")
            axes[i][j].set_ylabel("source")
        fig.colorbar(im, ax=axes[i].tolist(), fraction=0.03)
    what = "centred measurements (training mean subtracted)" if centred else "measurements"
    fig.suptitle(f"DCR {what}: true vs predicted, {method} {d.name}")
    p = root / "dcr_patterns.png"
    fig.savefig(p, dpi=110, bbox_inches="tight")
    plt.close(fig)
    note = (f"DCR measurement patterns: 3 test samples of {method} {d.name}, 21 sources x 42 "
            f"receivers, {what}.\n")
    return p, note


def report(dir: str | Path) -> str:
    """Write DIR/report.md and the PNG figures; return the markdown."""
    root = Path(dir).expanduser()
    sfile = root / "summary.json"
    if not sfile.is_file():
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
            _metric_vs_seconds_figure(root, methods, str(summary.get("metric", "rel_err")))]
    problem = _problem_of(root, methods)
    notes: list[str] = []
    if problem == "ellipse":
        p = _decision_boundary_figure(root, methods)
        if p is not None:
            figs.append(p)
    elif problem == "indian_pines":
        got = _indian_pines_figures(root, summary)
        if got is not None:
            figs += got[0]
            notes.append(got[1])
    elif problem == "dcr":
        got = _dcr_pattern_figure(root, methods)
        if got is not None:
            figs.append(got[0])
            notes.append(got[1])
    parts = [f"# {summary.get('experiment', root.name)}: results\n",
             f"metric: {summary.get('metric')} (final model), mean ± std over seeds; work units "
             "and seconds cumulative over all levels.\n", summary_table(summary), ""]
    if ref is not None and "finals" in ref:
        f = ref["finals"]
        parts.append(f"Reference GNvpro (Meganet.m, seed ref): rel_err train {f['train']:.4g}, "
                     f"val {f['val']:.4g}, test {f['test']:.4g}, "
                     f"{ref['work_units'][-1]:.0f} work units.\n")
    parts += notes
    parts.append("## Figures\n")
    parts += [f"![{p.stem}]({p.name})" for p in figs]
    md = "\n".join(parts) + "\n"
    (root / "report.md").write_text(md)
    return md
