"""The DCR experiment's problem (``problem = "dcr"``): data, seeded split, report figure."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import ExperimentError
from ..base import Problem, Split
from ..paths import optional_file

if TYPE_CHECKING:
    from ...config import ExperimentConfig


class DCR(Problem):
    """DCR surrogate regression: 3 parameters → 882 potential differences.

    The data: the ``--data`` file (:func:`load_dcr`), else ``n`` samples generated with
    ``data_seed`` and cached in ``cache_dir`` (default ``$GNVPRO_CACHE``, else
    ``~/.cache/gnvpro``).  Seed s: the samples permuted by ``np.random.default_rng(s)``, then
    split by position (:func:`dcr_split`, targets centred by the training mean).
    """

    name = "dcr"
    data_keys = frozenset({"n", "data_seed", "n_train", "n_val", "n_test", "cache_dir",
                           "workers"})

    def load(self, cfg: ExperimentConfig, data_path: str | None,
             progress: bool) -> dict[str, Any]:
        from .dataset import cached_dcr, load_dcr  # (scipy.sparse: only when DCR runs)

        p = optional_file(data_path)
        if p is not None:
            return load_dcr(p)
        d = cfg.data
        return cached_dcr(cache_dir(cfg), int(d.get("n", 10000)), int(d.get("data_seed", 0)),
                          progress=progress, workers=int(d.get("workers", 1)))

    def split(self, cfg: ExperimentConfig, raw: dict[str, Any], seed: int) -> Split:
        from .dataset import dcr_split

        d = cfg.data
        data = dict(raw)
        perm = np.random.default_rng(int(seed)).permutation(len(data["Y"]))
        data["Y"], data["D"] = np.asarray(data["Y"])[perm], np.asarray(data["D"])[perm]
        return dcr_split(data, int(d["n_train"]), int(d["n_val"]), d.get("n_test"))

    def figures(self, root: Path, summary: dict) -> tuple[list[Path], str]:
        got = pattern_figure(root, list(summary["methods"]))
        return ([], "") if got is None else ([got[0]], got[1])


def cache_dir(cfg: ExperimentConfig) -> Path:
    """Where generated DCR data is cached: ``[data] cache_dir``, else ``$GNVPRO_CACHE``, else
    ``~/.cache/gnvpro``."""
    if "cache_dir" in cfg.data:
        return Path(str(cfg.data["cache_dir"])).expanduser()
    return Path(os.environ.get("GNVPRO_CACHE", "~/.cache/gnvpro")).expanduser()


def pattern_figure(root: Path, methods: list[str]) -> tuple[Path, str] | None:
    """``dcr_patterns.png``: true vs predicted measurement patterns (21 sources x 42 receivers)
    of 3 test samples, gnvpro (else the first method), first finished seed; and a markdown
    note.  None if there is no such run or its data cannot be rebuilt here."""
    import torch

    from gnvpro.metrics import predict

    from ...report import load_run, pyplot

    method = "gnvpro" if "gnvpro" in methods else (methods[0] if methods else None)
    if method is None:
        return None
    seeds = sorted((root / method).glob("seed-*"))
    seeds = [d for d in seeds if (d / "model.pt").is_file() and (d / "config.json").is_file()]
    if not seeds:
        return None
    d = seeds[0]
    try:
        _, _, data, model = load_run(d, method)
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
    plt = pyplot()
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
