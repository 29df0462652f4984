"""Indian Pines hyperspectral segmentation (docs/experiments.md section 4).

The data are the 200-band "corrected" AVIRIS scene (145 x 145 pixels, 16 classes, 10249 labelled
pixels) stored in ``indian_pines.npz`` (see shared/data/README.md).

:class:`IndianPines` is the experiment's problem (``problem = "indian_pines"``); its report
figures are ``segmentation.png`` and ``confusion.png``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from .base import Problem, Split
from .paths import default_data_file, read_npz, require_file

if TYPE_CHECKING:
    from ..config import ExperimentConfig

FILE_NAME = "indian_pines.npz"
IMAGE_SHAPE = (145, 145)
N_BANDS = 200
CLASS_NAMES: tuple[str, ...] = (
    "Alfalfa",
    "Corn-notill",
    "Corn-mintill",
    "Corn",
    "Grass-pasture",
    "Grass-trees",
    "Grass-pasture-mowed",
    "Hay-windrowed",
    "Oats",
    "Soybean-notill",
    "Soybean-mintill",
    "Soybean-clean",
    "Wheat",
    "Woods",
    "Buildings-Grass-Trees-Drives",
    "Stone-Steel-Towers",
)
CLASS_COUNTS: tuple[int, ...] = (
    46, 1428, 830, 237, 483, 730, 28, 478, 20, 972, 2455, 593, 205, 1265, 386, 93,
)  # fmt: skip

_HOW_TO_GET = (
    "It is the shared archive 'indian_pines.npz' (arrays 'cube' (145,145,200) and 'labels' "
    "(145,145)), built from the GIC/EHU files Indian_pines_corrected.mat and "
    "Indian_pines_gt.mat as described in shared/data/README.md."
)


def load_indian_pines(path: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load ``(cube, labels)``: cube (145, 145, 200) uint16, labels (145, 145) uint8 in 0..16.

    ``path`` defaults to ``default_data_file("indian_pines.npz")``; a missing file raises a
    FileNotFoundError that says how to get it.
    """
    p = require_file(
        path if path is not None else default_data_file(FILE_NAME),
        "Indian Pines data file",
        _HOW_TO_GET,
    )
    cube, labels = read_npz(p, ("cube", "labels"), "Indian Pines")
    if cube.shape[:2] != labels.shape or cube.ndim != 3:
        raise ValueError(f"{p}: cube {cube.shape} and labels {labels.shape} do not match")
    return cube, labels


def standardise_pixels(X: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """Standardise each spectrum (last axis): subtract its mean, divide by max(std, 1/sqrt(bands)).

    The std is the population one (divide by the number of bands). Works on NumPy arrays
    (returned as float64) and on floating torch tensors (same dtype).
    """
    n_bands = X.shape[-1]
    floor = 1.0 / math.sqrt(n_bands)
    if isinstance(X, Tensor):
        Xf = X if X.is_floating_point() else X.double()
        mean = Xf.mean(dim=-1, keepdim=True)
        std = Xf.std(dim=-1, correction=0, keepdim=True)
        return (Xf - mean) / std.clamp_min(floor)
    Xf = np.asarray(X, dtype=np.float64)
    mean = Xf.mean(axis=-1, keepdims=True)
    std = Xf.std(axis=-1, keepdims=True)
    return (Xf - mean) / np.maximum(std, floor)


def all_labelled_pixels(
    path: str | os.PathLike[str] | None = None, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor, np.ndarray]:
    """All 10249 labelled pixels, in raster order, for drawing a predicted map.

    Returns ``(x, labels, pixel_index)``: x (n, 200) standardised spectra, labels (n,) int64
    class indices 0..15, and pixel_index (n,) int64 flat indices ``row * 145 + col``.
    """
    cube, lab = load_indian_pines(path)
    flat_lab = lab.reshape(-1)
    pix = np.flatnonzero(flat_lab > 0).astype(np.int64)
    spectra = cube.reshape(-1, cube.shape[-1])[pix]
    x = torch.from_numpy(standardise_pixels(spectra)).to(dtype)
    y = torch.from_numpy(flat_lab[pix].astype(np.int64) - 1)
    return x, y, pix


def _round_half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


def indian_pines_split(
    path: str | os.PathLike[str] | None = None,
    seed: int = 0,
    n_max: int = 312,
    holdout: int = 10,
    test_fraction: float = 0.2,
    dtype: torch.dtype = torch.float64,
) -> Split:
    """Class-balanced Indian Pines split (docs/experiments.md section 4).

    For each class with ``count`` labelled pixels, ``nb = min(count - holdout, n_max)`` pixels
    are drawn at random (seeded); ``round(test_fraction * nb)`` of them (halves rounded up) go to
    test, the other ones to train, and the ``count - nb`` pixels not drawn go to validation.
    Within each split the rows are shuffled (seeded). x is (n, 200) standardised spectra, y is
    (n,) int64 class indices 0..15 (file labels 1..16 minus one).

    Sizes with the defaults (measured): train 2,955 / validation 6,560 / test 734 (10,249 in
    all). Per class (train, val, test): Alfalfa 29/10/7, Corn-notill 250/1116/62,
    Corn-mintill 250/518/62, Corn 182/10/45, Grass-pasture 250/171/62, Grass-trees 250/418/62,
    Grass-pasture-mowed 14/10/4, Hay-windrowed 250/166/62, Oats 8/10/2, Soybean-notill
    250/660/62, Soybean-mintill 250/2143/62, Soybean-clean 250/281/62, Wheat 156/10/39, Woods
    250/953/62, Buildings-Grass-Trees-Drives 250/74/62, Stone-Steel-Towers 66/10/17.

    ``meta`` holds ``class_names``, ``class_counts``, per-class ``n_train`` / ``n_val`` /
    ``n_test`` lists, ``image_shape`` (145, 145), ``n_bands``, ``n_classes`` and the flat pixel
    indices (``row * 145 + col``, int64 NumPy arrays aligned with the rows of x) ``train_index``,
    ``val_index``, ``test_index``.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must lie in [0, 1], got {test_fraction}")
    cube, lab = load_indian_pines(path)
    flat_lab = lab.reshape(-1).astype(np.int64)
    spectra = cube.reshape(-1, cube.shape[-1])
    n_classes = int(flat_lab.max())
    rng = np.random.default_rng(seed)

    idx: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    sizes: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    counts: list[int] = []
    for c in range(1, n_classes + 1):
        pix = np.flatnonzero(flat_lab == c)
        count = len(pix)
        nb = min(count - holdout, n_max)
        if nb < 1:
            raise ValueError(f"class {c} has {count} pixels, too few for holdout={holdout}")
        pix = pix[rng.permutation(count)]
        n_test = _round_half_up(test_fraction * nb)
        parts = {"test": pix[:n_test], "train": pix[n_test:nb], "val": pix[nb:]}
        for k, v in parts.items():
            idx[k].append(v)
            sizes[k].append(len(v))
        counts.append(count)

    data: dict[str, tuple[Tensor, Tensor, np.ndarray]] = {}
    for k, parts_k in idx.items():
        pix = np.concatenate(parts_k)
        pix = pix[rng.permutation(len(pix))].astype(np.int64)
        x = torch.from_numpy(standardise_pixels(spectra[pix])).to(dtype)
        y = torch.from_numpy(flat_lab[pix] - 1)
        data[k] = (x, y, pix)

    names = list(CLASS_NAMES)
    if n_classes != len(CLASS_NAMES):
        names = [str(c) for c in range(n_classes)]
    meta = {
        "name": "indian_pines",
        "class_names": names,
        "class_counts": counts,
        "n_classes": n_classes,
        "n_bands": int(cube.shape[-1]),
        "image_shape": tuple(int(s) for s in lab.shape),
        "n_train": sizes["train"],
        "n_val": sizes["val"],
        "n_test": sizes["test"],
        "train_index": data["train"][2],
        "val_index": data["val"][2],
        "test_index": data["test"][2],
        "seed": seed,
    }
    return Split(
        x_train=data["train"][0],
        y_train=data["train"][1],
        x_val=data["val"][0],
        y_val=data["val"][1],
        x_test=data["test"][0],
        y_test=data["test"][1],
        meta=meta,
    )


class IndianPines(Problem):
    """Indian Pines pixel classification: the class-balanced split of
    :func:`indian_pines_split`; the raw data is the checked file path (read per seed)."""

    name = "indian_pines"
    data_keys = frozenset({"n_max", "holdout", "test_fraction"})

    def load(self, cfg: ExperimentConfig, data_path: str | None, progress: bool) -> Path:
        return require_file(data_path if data_path is not None else default_data_file(FILE_NAME),
                            "Indian Pines data file", _HOW_TO_GET)

    def split(self, cfg: ExperimentConfig, raw: Path, seed: int) -> Split:
        d = cfg.data
        return indian_pines_split(raw, seed=int(seed), n_max=int(d.get("n_max", 312)),
                                  holdout=int(d.get("holdout", 10)),
                                  test_fraction=float(d.get("test_fraction", 0.2)))

    def figures(self, root: Path, summary: dict) -> tuple[list[Path], str]:
        got = segmentation_figures(root, summary)
        return ([], "") if got is None else got


def segmentation_figures(root: Path, summary: dict) -> tuple[list[Path], str] | None:
    """``segmentation.png`` (ground truth, predicted and error maps over all labelled pixels)
    and ``confusion.png`` (class-normalised confusion matrix over all labelled pixels) of the
    best-validation GNvpro run (else the best run of any method, see ``report.best_run``) of the
    run directory ``root``, and a markdown note; None if no run has a model."""
    from ..data import _data_errors
    from ..report import (
        best_run,
        confusion_figure,
        confusion_matrix,
        load_run,
        predict_classes,
        pyplot,
    )

    best = best_run(root, summary)
    if best is None:
        return None
    method, d = best
    _, info, data, model = load_run(d, method)
    with _data_errors(f"{d}: the Indian Pines pixels cannot be read for the segmentation"):
        x, y, pix = all_labelled_pixels(info.get("data_path"))
    pred = predict_classes(model, x, batch=4096)
    y = y.numpy()
    shape = tuple(data.meta.get("image_shape", IMAGE_SHAPE))
    names = list(data.meta.get("class_names", [str(i) for i in range(int(y.max()) + 1)]))
    k = len(names)
    gt = np.zeros(shape[0] * shape[1], dtype=int)
    pm = np.zeros_like(gt)
    gt[pix], pm[pix] = y + 1, pred + 1
    err = np.full(gt.shape, np.nan)
    err[pix] = (pred != y).astype(float)
    acc = float((pred == y).mean())
    test_pix = set(np.asarray(info["split"].get("test_index", []), dtype=np.int64).tolist())

    plt = pyplot()
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

    p2 = confusion_figure(root / "confusion.png", confusion_matrix(y, pred, k), names,
                          f"confusion matrix (rows normalised), all labelled pixels, {method} "
                          f"{d.name}")
    in_test = np.isin(pix, np.fromiter(test_pix, dtype=np.int64)) if test_pix else None
    test_acc = float((pred[in_test] == y[in_test]).mean()) if in_test is not None else math.nan
    note = (f"Segmentation maps and confusion matrix: {method}, {d.name} (best validation "
            f"accuracy); accuracy over all {len(y)} labelled pixels {acc:.4f} "
            f"(test pixels {test_acc:.4f}).\n")
    return [p1, p2], note
