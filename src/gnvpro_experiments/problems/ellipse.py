"""The ellipse toy problem (docs/experiments.md section 1): binary classification in 2-D.

:class:`Ellipse` is the experiment's problem (``problem = "ellipse"``); its report figure is
``decision_boundary.png``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import ExperimentError
from .base import Problem, Split
from .paths import optional_file

if TYPE_CHECKING:
    from ..config import ExperimentConfig

ASPECT = 0.4  # the second coordinate is scaled by this: x = (r cos phi, 0.4 r sin phi)


def ellipse_data(
    n_per_class: int = 7000,
    n_train: int = 5000,
    n_val: int = 1000,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> Split:
    """Points inside (label 1, r ~ U[0,1]) vs. the ring outside (label 0, r ~ U[1,2]) the ellipse.

    Each point is x = (r cos phi, 0.4 r sin phi) with phi ~ U[0, 2 pi]. The 2 * n_per_class
    points are shuffled with a seeded generator; the first ``n_train`` are training data, the
    next ``n_val`` validation, the rest test. Labels are int64 of shape (n,).
    """
    n_total = 2 * n_per_class
    if n_train + n_val > n_total:
        raise ValueError(f"n_train + n_val = {n_train + n_val} exceeds {n_total} points")
    g = torch.Generator().manual_seed(seed)
    r_in = torch.rand(n_per_class, generator=g, dtype=torch.float64)
    r_out = 1.0 + torch.rand(n_per_class, generator=g, dtype=torch.float64)
    r = torch.cat([r_in, r_out])
    phi = 2 * math.pi * torch.rand(n_total, generator=g, dtype=torch.float64)
    x = torch.stack([r * torch.cos(phi), ASPECT * r * torch.sin(phi)], dim=1)
    y = torch.cat(
        [torch.ones(n_per_class, dtype=torch.int64), torch.zeros(n_per_class, dtype=torch.int64)]
    )
    perm = torch.randperm(n_total, generator=g)
    x, y = x[perm].to(dtype), y[perm]
    a, b = n_train, n_train + n_val
    return Split(
        x_train=x[:a],
        y_train=y[:a],
        x_val=x[a:b],
        y_val=y[a:b],
        x_test=x[b:],
        y_test=y[b:],
        meta={"name": "ellipse", "n_classes": 2, "aspect": ASPECT, "seed": seed},
    )


class Ellipse(Problem):
    """The ellipse toy: generated data (:func:`ellipse_data`), no data file."""

    name = "ellipse"
    data_keys = frozenset({"n_per_class", "n_train", "n_val"})

    def load(self, cfg: ExperimentConfig, data_path: str | None, progress: bool) -> None:
        if optional_file(data_path) is not None:
            raise ExperimentError("the ellipse experiment generates its data; --data is not used")
        return None

    def split(self, cfg: ExperimentConfig, raw: None, seed: int) -> Split:
        d = cfg.data
        return ellipse_data(int(d.get("n_per_class", 7000)), int(d.get("n_train", 5000)),
                            int(d.get("n_val", 1000)), seed=int(seed))

    def figures(self, root: Path, summary: dict) -> tuple[list[Path], str]:
        p = decision_boundary_figure(root, list(summary["methods"]))
        return ([] if p is None else [p]), ""


def decision_boundary_figure(root: Path, methods: list[str]) -> Path | None:
    """``decision_boundary.png``: the predicted class regions of the first seed of every method
    of the run directory ``root`` (None if no method has a finished first seed)."""
    from ..report import load_run, pyplot

    runs = []
    for m in methods:
        seeds = sorted((root / m).glob("seed-*"))
        if seeds and (seeds[0] / "model.pt").is_file() and (seeds[0] / "config.json").is_file():
            runs.append((m, seeds[0]))
    if not runs:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4.2), squeeze=False)
    gx, gy = np.meshgrid(np.linspace(-2.2, 2.2, 220), np.linspace(-1.0, 1.0, 120))
    grid = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], axis=1), dtype=torch.float64)
    for ax, (method, d) in zip(axes[0], runs, strict=True):
        _, _, data, model = load_run(d, method)
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
        ax.plot(np.cos(t), ASPECT * np.sin(t), "k:", lw=1, label="true boundary")
        ax.set_title(f"{method}, {d.name}: test accuracy {acc:.4f}")
        ax.set_aspect("equal")
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path = root / "decision_boundary.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
