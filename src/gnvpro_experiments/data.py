"""Data and networks of an experiment: load the data set and build the seeded split (both by
the experiment's registered problem, problems/registry.py) and the model θ0, with one-line
errors for unusable data."""

from __future__ import annotations

import contextlib
import hashlib
import math
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
from .problems.base import Problem, Split
from .problems.registry import get_problem

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


def problem_of(cfg: ExperimentConfig) -> Problem:
    """The registered :class:`~.problems.base.Problem` of the experiment (``cfg.problem``)."""
    return get_problem(cfg.problem)


def load_problem_data(cfg: ExperimentConfig, data_path: str | None, progress: bool) -> Any:
    """The raw data of the experiment (its problem's ``load``), loaded once per run (not per
    seed); ``data_path``: the ``--data`` file, None: the problem's default."""
    return problem_of(cfg).load(cfg, data_path, progress)


def build_data(cfg: ExperimentConfig, raw: Any, seed: int | str) -> Split:
    """The train/val/test split of ``seed`` (identical for every method of that seed)."""
    problem = problem_of(cfg)
    if seed == "ref":
        return problem.reference_split(cfg, raw)
    return problem.split(cfg, raw, int(seed))


def _n_outputs(data: Split) -> int:
    y = data.y_train
    if y.dim() == 1 and not y.is_floating_point():  # class indices
        n = (data.meta or {}).get("n_classes")
        return int(n) if n is not None else int(y.max()) + 1
    return int(y.shape[1])


def build_model(cfg: ExperimentConfig, data: Split, seed: int | str,
                method: str | None = None) -> nn.Sequential:
    """θ0 of ``seed`` (head last): the problem's reference network for seed "ref", else seeded
    init.

    ``method``: use that method's own model settings (``[methods.NAME] model = {...}``).
    """
    m = cfg.model if method is None else cfg.method_model(method)
    if seed == "ref":
        return problem_of(cfg).reference_model(cfg)
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


def found_data_file(cfg: ExperimentConfig) -> str | None:
    """The file the problem's default lookup ($GNVPRO_DATA, the shared directory) finds when it
    returns arrays rather than the path (CDR), for the fingerprint's "source"; else None."""
    if cfg.problem == "cdr":
        from .problems.cdr import default_cdr_path

        p = default_cdr_path()
        return str(p.resolve()) if p.is_file() else None
    return None


def data_fingerprint(raw: Any, data_path: str | None, found: str | None = None) -> dict:
    """What identifies the data a run reads, wherever it was found (--data, $GNVPRO_DATA, the
    shared directory): {"source", "size" (bytes), "sha256"} of the files a problem's ``load``
    returned (a path: the file, or every file of a directory), or of the arrays it read."""
    h = hashlib.sha256()
    size = 0
    source = found if data_path is None else str(Path(data_path).expanduser().resolve())

    def feed(obj: Any) -> None:
        nonlocal size, source
        if isinstance(obj, Path) and obj.exists():
            p = Path(obj)
            source = source or str(p.resolve())
            files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
            for f in files:
                h.update(str(f.relative_to(p) if f != p else f.name).encode() + b"\0")
                with open(f, "rb") as fh:
                    while chunk := fh.read(1 << 22):
                        h.update(chunk)
                        size += len(chunk)
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                h.update(str(k).encode() + b"\0")
                feed(obj[k])
        elif isinstance(obj, list | tuple):
            for v in obj:
                feed(v)
        elif isinstance(obj, np.ndarray | torch.Tensor):
            a = obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else obj
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
            size += a.nbytes
        elif obj is not None:
            h.update(repr(obj).encode())

    feed(raw)
    if source is None:
        source = "generated from the settings" if raw is None else "the default data file"
    return {"source": source, "size": size, "sha256": h.hexdigest()}


def _memory_bytes() -> int:
    """This machine's physical memory (bytes; 2**40 where it cannot be read)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):  # pragma: no cover - not POSIX
        return 2**40


def check_levels(cfg: ExperimentConfig, methods: list[str]) -> None:
    """Refuse a level count whose last network would not fit in memory: every level doubles the
    residual network's weight grid (n_nodes → 2·n_nodes − 1), and the Gauss-Newton methods hold
    a few dozen vectors of its size."""
    mem = _memory_bytes()
    for m in methods:
        levels, model = cfg.method_levels(m), cfg.method_model(m)
        if levels <= 1 or model.get("kind") != "resnet":
            continue
        width, nodes = int(model["width"]), int(model.get("n_nodes", 2))
        if levels > 64:
            need = math.inf
        else:
            nodes = 2 ** (levels - 1) * (nodes - 1) + 1
            need = 32 * nodes * (width * width + width) * 8
            if model.get("steps_follow_grid"):  # one layer per interval: activations grow too
                need += 4 * (nodes - 1) * int(cfg.data.get("n_train") or 1000) * width * 8
        if need > mem:
            raise ExperimentError(
                f"{levels} levels: the last network of {m} would have {nodes} nodes and need "
                f"about {min(need, 2**80) / 2**30:.3g} GiB, more than this machine's "
                f"{mem / 2**30:.0f} GiB; use fewer levels (--levels)")
