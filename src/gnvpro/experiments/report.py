"""Tables and figures of a ``gnvpro run`` output directory.

    report(dir) -> markdown   (also written to DIR/report.md)

Figures (PNG, matplotlib Agg) in DIR: ``loss_vs_work.png`` and ``loss_vs_seconds.png`` (training
and validation loss, log y, each seed faint and the median bold, level starts dotted, the
reference GNvpro trajectory dashed where ``reference_history.json`` exists) and, for the
classification toy, ``decision_boundary.png``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

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
            out[d.name] = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


def _series(recs: list[dict], xkey: str, which: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for r in recs:
        if which == "train":
            y = r.get("loss")
        else:
            y = (r.get("metrics") or {}).get("val", {}).get("loss")
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
            curves = [_series(recs, xkey, which) for recs in hists.values()]
            med = _median_curve(curves)
            for j, (x, y) in enumerate(curves):
                single = med is None and j == 0
                ax.plot(x, y, color=col, lw=2 if single else 0.8, alpha=1 if single else 0.3,
                        label=method if single else None)
            if med is not None:
                ax.plot(*med, color=col, lw=2.2, label=f"{method} (median of {len(curves)})")
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


def _decision_boundary_figure(root: Path, methods: list[str]) -> Path | None:
    """Ellipse toy: the predicted class regions of the first seed of every method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from .config import config_from_dict
    from .runner import build_data, build_model

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
        info = json.loads((d / "config.json").read_text())
        cfg = config_from_dict(info["experiment"], str(d / "config.json"))
        seed = info["seed"]
        data = build_data(cfg, None, seed)
        model = build_model(cfg, data, seed)
        model.load_state_dict(torch.load(d / "model.pt", weights_only=True))
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


def report(dir: str | Path) -> str:
    """Write DIR/report.md and the PNG figures; return the markdown."""
    root = Path(dir).expanduser()
    sfile = root / "summary.json"
    if not sfile.is_file():
        raise ExperimentError(f"no summary.json in {root} (run `gnvpro run ... --out {root}`)")
    summary = json.loads(sfile.read_text())
    methods = list(summary.get("methods", {}))
    ref = None
    rfile = root / "reference_history.json"
    if rfile.is_file():
        ref = json.loads(rfile.read_text())
    figs = [_convergence_figure(root, methods, "work_units", ref),
            _convergence_figure(root, methods, "seconds", None)]
    if summary.get("metric") == "accuracy":
        p = _decision_boundary_figure(root, methods)
        if p is not None:
            figs.append(p)
    parts = [f"# {summary.get('experiment', root.name)}: results\n",
             f"metric: {summary.get('metric')} (final model), mean ± std over seeds; work units "
             "and seconds cumulative over all levels.\n", summary_table(summary), ""]
    if ref is not None and "finals" in ref:
        f = ref["finals"]
        parts.append(f"Reference GNvpro (Meganet.m, seed ref): rel_err train {f['train']:.4g}, "
                     f"val {f['val']:.4g}, test {f['test']:.4g}, "
                     f"{ref['work_units'][-1]:.0f} work units.\n")
    parts.append("## Figures\n")
    parts += [f"![{p.stem}]({p.name})" for p in figs]
    md = "\n".join(parts) + "\n"
    (root / "report.md").write_text(md)
    return md
