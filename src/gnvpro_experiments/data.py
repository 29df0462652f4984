"""Data and networks of an experiment: load the data set, build the seeded split and the
model θ0, with one-line errors for unusable data."""

from __future__ import annotations

import contextlib
import os
import pickle
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import ExperimentConfig, ExperimentError
from .problems.base import Split

_DATA_ERRORS = (ValueError, KeyError, IndexError, EOFError, OSError, zipfile.BadZipFile,
                zlib.error, pickle.UnpicklingError, NotImplementedError)


@contextlib.contextmanager
def _data_errors(what: str) -> Iterator[None]:
    """Turn the errors of an unreadable data file into one-line ExperimentErrors."""
    try:
        yield
    except (ExperimentError, FileNotFoundError):
        raise
    except _DATA_ERRORS as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExperimentError(f"{what}: {msg}") from e


def _check_split_finite(data: Split, seed: int | str) -> None:
    """Refuse NaN/Inf in the data before any method trains on it."""
    for f in fields(Split):
        t = getattr(data, f.name)
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise ExperimentError(
                    f"the data of seed {seed} hold {bad} NaN/Inf value(s) in {f.name} "
                    f"({bad / max(t.numel(), 1):.0%} of it): fix or replace the data file"
                )


def _cache_dir(cfg: ExperimentConfig) -> Path:
    if "cache_dir" in cfg.data:
        return Path(str(cfg.data["cache_dir"])).expanduser()
    return Path(os.environ.get("GNVPRO_CACHE", "~/.cache/gnvpro")).expanduser()


def _check_data_path(data_path: str | os.PathLike | None) -> Path | None:
    if data_path is None:
        return None
    p = Path(data_path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {p}")
    return p


def load_problem_data(cfg: ExperimentConfig, data_path: str | None, progress: bool) -> Any:
    """The raw data of the experiment, loaded once per run (not per seed).

    Indian Pines and the image data sets: the checked path (None: the default location), the
    split functions read the files per seed.
    """
    if cfg.problem == "indian_pines":
        from .problems.indian_pines import _HOW_TO_GET, FILE_NAME
        from .problems.paths import default_data_file, require_file

        return require_file(data_path if data_path is not None else default_data_file(FILE_NAME),
                            "Indian Pines data file", _HOW_TO_GET)
    if cfg.problem in ("cifar10", "fashion-mnist"):
        return _image_path(cfg, data_path)
    p = _check_data_path(data_path)
    if cfg.problem == "cdr":
        from .problems.cdr import load_cdr_mat

        Y, C = load_cdr_mat(p)
        n_need = sum(int(cfg.data[k]) for k in ("n_train", "n_val", "n_test"))
        if len(Y) < n_need:
            raise ExperimentError(f"CDR data has {len(Y)} samples, the split needs {n_need}")
        return Y, C
    if cfg.problem == "dcr":
        from .problems import dcr

        if p is not None:
            return dcr.load_dcr(p)
        return dcr.cached_dcr(
            _cache_dir(cfg), int(cfg.data.get("n", 10000)), int(cfg.data.get("data_seed", 0)),
            progress=progress, workers=int(cfg.data.get("workers", 1)),
        )
    if cfg.problem == "ellipse":
        if p is not None:
            raise ExperimentError("the ellipse experiment generates its data; --data is not used")
        return None
    raise ExperimentError(f"unknown problem {cfg.problem!r}")  # pragma: no cover


def _image_path(cfg: ExperimentConfig, data_path: str | None) -> Path | None:
    from .problems import images
    from .problems.paths import default_data_file, require_dir, require_file

    if cfg.problem == "cifar10":
        if data_path is not None and Path(data_path).expanduser().is_dir():
            return Path(data_path).expanduser()
        p = data_path if data_path is not None else default_data_file("cifar10.npz")
        return require_file(p, "CIFAR-10 data (cifar10.npz or a cifar-10-batches-py directory)",
                            "It is the shared archive cifar10.npz (shared/data/README.md).")
    d = data_path if data_path is not None else images.FASHION_MNIST_DIR
    return require_dir(d, "Fashion-MNIST", "Install the Debian package dataset-fashion-mnist "
                       "(files under /usr/share/datasets/fashion-mnist).")


def _reference() -> dict:
    from .problems.cdr import load_reference

    return load_reference()


def build_data(cfg: ExperimentConfig, raw: Any, seed: int | str) -> Split:
    """The train/val/test split of ``seed`` (identical for every method of that seed)."""
    d = cfg.data
    if cfg.problem == "cdr":
        from .problems.cdr import cdr_split, reference_split

        Y, C = raw
        if seed == "ref":
            return reference_split(_reference(), Y, C)
        a, b, c = int(d["n_train"]), int(d["n_val"]), int(d["n_test"])
        perm = torch.randperm(len(Y), generator=torch.Generator().manual_seed(int(seed)))
        return cdr_split(Y, C, perm[:a].numpy(), perm[a : a + b].numpy(),
                         perm[a + b : a + b + c].numpy())
    if cfg.problem == "dcr":
        from .problems.dcr import dcr_split

        data = dict(raw)
        perm = np.random.default_rng(int(seed)).permutation(len(data["Y"]))
        data["Y"], data["D"] = np.asarray(data["Y"])[perm], np.asarray(data["D"])[perm]
        return dcr_split(data, int(d["n_train"]), int(d["n_val"]), d.get("n_test"))
    if cfg.problem == "indian_pines":
        from .problems.indian_pines import indian_pines_split

        return indian_pines_split(raw, seed=int(seed), n_max=int(d.get("n_max", 312)),
                                  holdout=int(d.get("holdout", 10)),
                                  test_fraction=float(d.get("test_fraction", 0.2)))
    if cfg.problem in ("cifar10", "fashion-mnist"):
        from .problems.images import image_split

        dtype = torch.float64 if cfg.model.get("dtype") == "float64" else torch.float32
        sub = d.get("subset")
        return image_split(cfg.problem, raw, n_train=d.get("n_train"), n_val=d.get("n_val"),
                           subset=None if sub is None else int(sub), seed=int(seed), dtype=dtype)
    if cfg.problem == "ellipse":
        from .problems.ellipse import ellipse_data

        return ellipse_data(int(d.get("n_per_class", 7000)), int(d.get("n_train", 5000)),
                            int(d.get("n_val", 1000)), seed=int(seed))
    raise ExperimentError(f"unknown problem {cfg.problem!r}")  # pragma: no cover


def _n_outputs(data: Split) -> int:
    y = data.y_train
    if y.dim() == 1 and not y.is_floating_point():  # class indices
        n = (data.meta or {}).get("n_classes")
        return int(n) if n is not None else int(y.max()) + 1
    return int(y.shape[1])


def build_model(cfg: ExperimentConfig, data: Split, seed: int | str,
                method: str | None = None) -> nn.Sequential:
    """θ0 of ``seed`` (head last): the reference network for CDR seed "ref", else seeded init.

    ``method``: use that method's own model settings (``[methods.NAME] model = {...}``).
    """
    m = cfg.model if method is None else cfg.method_model(method)
    if cfg.problem == "cdr" and seed == "ref":
        from .problems.cdr import reference_network

        return reference_network(_reference())
    g = torch.Generator().manual_seed(int(seed))
    n_in = int(data.x_train.shape[1])
    if m["kind"] == "cnn":
        from .models.cnn import paper_cnn

        dtype = torch.float64 if m.get("dtype") == "float64" else torch.float32
        return paper_cnn(n_in, _n_outputs(data), generator=g, dtype=dtype)
    if m["kind"] == "resnet":
        from .models.resnet import paper_network

        n_out = _n_outputs(data)
        return paper_network(
            n_in, n_out, int(m["width"]), n_nodes=int(m.get("n_nodes", 2)),
            T=float(m.get("T", 1.0)), n_steps=int(m.get("n_steps", 1)),
            open_bias=bool(m.get("open_bias", False)), generator=g, dtype=torch.float64,
        )
    from .models.mlp import mlp

    return mlp(n_in, list(m["hidden"]), int(m.get("out_features", 1)),
               activation=str(m.get("activation", "tanh")), generator=g)


def build_final_model(cfg: ExperimentConfig, data: Split, seed: int | str,
                      method: str) -> nn.Sequential:
    """An empty network with the architecture of ``method``'s final model (after its levels'
    refinements), to load a saved ``model.pt`` into."""
    model = build_model(cfg, data, seed, method)
    if cfg.method_levels(method) > 1:
        from .models.resnet import refine_network

        follow = bool(cfg.method_model(method).get("steps_follow_grid", False))
        for _ in range(cfg.method_levels(method) - 1):
            model = refine_network(model, follow)
    return model


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """model(x) in chunks (big image sets)."""
    if len(x) <= chunk:
        return model(x)
    return torch.cat([model(x[i : i + chunk]) for i in range(0, len(x), chunk)])


def to_device(data: Split, device: str) -> Split:
    """The split with every tensor on `device`."""
    if device == "cpu":
        return data
    return Split(*(getattr(data, f.name).to(device) for f in fields(Split) if f.name != "meta"),
                 meta=data.meta)


def _regularizer(cfg: ExperimentConfig, model: nn.Sequential):
    if cfg.regularizer == "time_smoothness":
        from .models.resnet import time_smoothness

        return time_smoothness(model)
    return None
