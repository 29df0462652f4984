"""Run an experiment: every method from the same split and θ0 per seed, multilevel, logged.

Layout of the output directory::

    DIR/summary.json                      final metrics per method and seed (schema below)
    DIR/reference_history.json            CDR with seed "ref": the reference GNvpro history
    DIR/METHOD/seed-S/config.json         the resolved settings of the run (with data_path,
                                          n_levels and the split's meta: sizes, indices, seed)
    DIR/METHOD/seed-S/history.jsonl       one training record per line (level, cumulative WU/s)
    DIR/METHOD/seed-S/final.json          train/val/test metrics of the final model
    DIR/METHOD/seed-S/model.pt            the final state_dict
    DIR/METHOD/seed-S/checkpoint.pt       while a run is unfinished: its state after the last
                                          finished level (``gnvpro run ... --resume``)

summary.json: {"experiment", "metric", "settings", "methods": {METHOD: [{"seed", "train", "val",
"test", "work_units", "seconds", "inner_seconds"}, ...]}}; it receives finished runs only.
Runs into a DIR that already holds results add to it: finished (method, seed) runs (final.json,
written last) are kept and never rerun or rewritten, so methods can run one after another (or in
separate processes; summary.json is written under a file lock) into one table. "settings" (the
resolved config, budget scale, device and data path) must match, so that the table never mixes
settings. Every file is written atomically (temporary file and rename); a killed run continues
from its last level checkpoint with ``--resume`` (else it starts afresh).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import pickle
import sys
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..losses import make_loss
from ..metrics import prediction_metrics
from ..problems.base import Split
from ..progress import bar as progress_bar
from ..progress import on_terminal
from .config import ExperimentConfig, ExperimentError, parse_methods, parse_seeds

__all__ = [
    "build_data", "build_final_model", "build_model", "load_problem_data", "predict",
    "earlier_summary", "run_experiment", "seed_label", "to_device", "to_jsonable",
    "write_summary",
]

_CUMULATIVE = ("work_units", "seconds", "inner_seconds")


def seed_label(seed: int | str) -> str:
    return f"seed-{seed}"


def to_jsonable(obj: Any) -> Any:
    """Tensors, numpy values, dataclasses, enums → plain JSON values (NaN/inf kept as floats)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist()) if obj.numel() != 1 else obj.item()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return to_jsonable(obj.to_dict())
    if hasattr(obj, "value") and hasattr(obj, "name") and not isinstance(obj, str | int | float):
        return str(obj.value)
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    return str(obj)


def _write_json(path: Path, obj: Any) -> None:
    """Write atomically (temporary file, then rename): a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(to_jsonable(obj), indent=2) + "\n")
    os.replace(tmp, path)


# what unreadable data files raise (corrupt, truncated, empty, wrong format)
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


# ----------------------------------------------------------------------------------------------
# data and models
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
        from ..problems.indian_pines import _HOW_TO_GET, FILE_NAME
        from ..problems.paths import default_data_file, require_file

        return require_file(data_path if data_path is not None else default_data_file(FILE_NAME),
                            "Indian Pines data file", _HOW_TO_GET)
    if cfg.problem in ("cifar10", "fashion-mnist"):
        return _image_path(cfg, data_path)
    p = _check_data_path(data_path)
    if cfg.problem == "cdr":
        from ..problems.cdr import load_cdr_mat

        Y, C = load_cdr_mat(p)
        n_need = sum(int(cfg.data[k]) for k in ("n_train", "n_val", "n_test"))
        if len(Y) < n_need:
            raise ExperimentError(f"CDR data has {len(Y)} samples, the split needs {n_need}")
        return Y, C
    if cfg.problem == "dcr":
        from ..problems import dcr

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
    from ..problems import images
    from ..problems.paths import default_data_file, require_dir, require_file

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
    from ..problems.cdr import load_reference

    return load_reference()


def build_data(cfg: ExperimentConfig, raw: Any, seed: int | str) -> Split:
    """The train/val/test split of ``seed`` (identical for every method of that seed)."""
    d = cfg.data
    if cfg.problem == "cdr":
        from ..problems.cdr import cdr_split, reference_split

        Y, C = raw
        if seed == "ref":
            return reference_split(_reference(), Y, C)
        a, b, c = int(d["n_train"]), int(d["n_val"]), int(d["n_test"])
        perm = torch.randperm(len(Y), generator=torch.Generator().manual_seed(int(seed)))
        return cdr_split(Y, C, perm[:a].numpy(), perm[a : a + b].numpy(),
                         perm[a + b : a + b + c].numpy())
    if cfg.problem == "dcr":
        from ..problems.dcr import dcr_split

        data = dict(raw)
        perm = np.random.default_rng(int(seed)).permutation(len(data["Y"]))
        data["Y"], data["D"] = np.asarray(data["Y"])[perm], np.asarray(data["D"])[perm]
        return dcr_split(data, int(d["n_train"]), int(d["n_val"]), d.get("n_test"))
    if cfg.problem == "indian_pines":
        from ..problems.indian_pines import indian_pines_split

        return indian_pines_split(raw, seed=int(seed), n_max=int(d.get("n_max", 312)),
                                  holdout=int(d.get("holdout", 10)),
                                  test_fraction=float(d.get("test_fraction", 0.2)))
    if cfg.problem in ("cifar10", "fashion-mnist"):
        from ..problems.images import image_split

        dtype = torch.float64 if cfg.model.get("dtype") == "float64" else torch.float32
        sub = d.get("subset")
        return image_split(cfg.problem, raw, n_train=d.get("n_train"), n_val=d.get("n_val"),
                           subset=None if sub is None else int(sub), seed=int(seed), dtype=dtype)
    if cfg.problem == "ellipse":
        from ..problems.ellipse import ellipse_data

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
        from ..problems.cdr import reference_network

        return reference_network(_reference())
    g = torch.Generator().manual_seed(int(seed))
    n_in = int(data.x_train.shape[1])
    if m["kind"] == "cnn":
        from ..models.cnn import paper_cnn

        dtype = torch.float64 if m.get("dtype") == "float64" else torch.float32
        return paper_cnn(n_in, _n_outputs(data), generator=g, dtype=dtype)
    if m["kind"] == "resnet":
        from ..models.resnet import paper_network

        n_out = _n_outputs(data)
        return paper_network(
            n_in, n_out, int(m["width"]), n_nodes=int(m.get("n_nodes", 2)),
            T=float(m.get("T", 1.0)), n_steps=int(m.get("n_steps", 1)),
            open_bias=bool(m.get("open_bias", False)), generator=g, dtype=torch.float64,
        )
    from ..models.mlp import mlp

    return mlp(n_in, list(m["hidden"]), int(m.get("out_features", 1)),
               activation=str(m.get("activation", "tanh")), generator=g)


def build_final_model(cfg: ExperimentConfig, data: Split, seed: int | str,
                      method: str) -> nn.Sequential:
    """An empty network with the architecture of ``method``'s final model (after its levels'
    refinements), to load a saved ``model.pt`` into."""
    model = build_model(cfg, data, seed, method)
    if cfg.method_levels(method) > 1:
        from ..models.resnet import refine_network

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
        from ..models.resnet import time_smoothness

        return time_smoothness(model)
    return None


@torch.no_grad()
def final_metrics(cfg: ExperimentConfig, model: nn.Module, data: Split) -> dict:
    loss = make_loss(cfg.loss)
    n_out = int(model[-1].out_features)
    out = {}
    for part in ("train", "val", "test"):
        x, y = getattr(data, f"x_{part}"), getattr(data, f"y_{part}")
        out[part] = prediction_metrics(loss, predict(model, x), y, n_out)
    return out


# ----------------------------------------------------------------------------------------------
def _train_fn():
    from .. import baselines

    fn = getattr(baselines, "train", None)
    if fn is None:
        raise ExperimentError("gnvpro.baselines.train is not available in this installation")
    return fn


def run_one(cfg: ExperimentConfig, method: str, model0: nn.Module, data: Split, seed: int | str,
            run_dir: Path, budget_scale: float, device: str, progress: bool,
            data_path: str | None = None, resume: bool = False) -> dict:
    """Train one method from θ0 through all levels; write the run's files; return its summary.

    A finished run (its final.json, written last, exists) is never rerun or rewritten: its row
    is returned. After every level but the last a checkpoint (model, history, counters, RNG
    state) is written atomically; with ``resume`` a killed run continues from it.
    """
    from ..baselines.base import TrainSettings

    done = finished_row(run_dir, seed, cfg.metric)
    if done is not None:
        return done
    train = _train_fn()
    run_dir.mkdir(parents=True, exist_ok=True)
    n_levels = cfg.method_levels(method)
    follow = bool(cfg.method_model(method).get("steps_follow_grid", False))
    model = copy.deepcopy(model0).to(device)
    history: list[dict] = []
    offset = dict.fromkeys(_CUMULATIVE, 0.0)
    level_cfgs: list[dict] = []
    first, wall0 = 1, 0.0
    ckpt = run_dir / CHECKPOINT
    if resume and ckpt.is_file():
        model, state = _load_checkpoint(ckpt, model, follow, device)
        history, level_cfgs, offset = state["history"], state["level_cfgs"], state["offset"]
        first, wall0 = state["level"] + 1, state["wall"]
    elif ckpt.exists():
        ckpt.unlink()  # no --resume: start afresh
    _write_text(run_dir / "history.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    t_start = time.perf_counter()
    with (run_dir / "history.jsonl").open("a") as fh:
        for level in range(first, n_levels + 1):
            kw = cfg.method_settings(method, level, budget_scale)
            kw.update(seed=int(seed) if isinstance(seed, int) else 0, progress=progress,
                      regularizer=_regularizer(cfg, model))
            settings = TrainSettings(**kw)
            level_cfgs.append({k: v for k, v in kw.items() if k != "regularizer"})
            records = train(method, model, data, settings)
            last = dict.fromkeys(_CUMULATIVE, 0.0)
            for i, rec in enumerate(records):
                rec = to_jsonable(dict(rec))
                rec["level"] = level
                rec["level_start"] = i == 0
                for k in _CUMULATIVE:
                    v = float(rec.get(k, 0.0) or 0.0)
                    last[k] = v
                    rec[f"level_{k}"] = v
                    rec[k] = offset[k] + v
                history.append(rec)
                fh.write(json.dumps(rec) + "\n")
            fh.flush()
            for k in _CUMULATIVE:
                offset[k] += last[k]
            if progress and not on_terminal():  # a log: one line per level, no bars
                print(f"{cfg.name} {method} {seed_label(seed)} level {level}/{n_levels}: "
                      f"loss {history[-1]['loss']:.4g}, {offset['work_units']:.0f} WU, "
                      f"{offset['seconds']:.1f} s", file=sys.stderr, flush=True)
            if level < n_levels:
                from ..models.resnet import refine_network

                model = refine_network(model, follow)
                _save_checkpoint(ckpt, model, {
                    "level": level, "history": history, "level_cfgs": level_cfgs,
                    "offset": offset, "wall": wall0 + time.perf_counter() - t_start})
    wall = wall0 + time.perf_counter() - t_start
    fin = final_metrics(cfg, model, data)
    _torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                run_dir / "model.pt")
    _write_json(run_dir / "config.json", {
        "experiment": cfg.to_dict(), "method": method, "seed": seed, "device": device,
        "budget_scale": budget_scale, "levels": level_cfgs,
        "architecture": repr(model),
        # what the report needs to rebuild the split and the network
        "data_path": None if data_path is None else str(Path(data_path).expanduser().resolve()),
        "n_levels": cfg.method_levels(method),
        "split": _split_info(data),
    })
    final = {**fin, "work_units": offset["work_units"], "seconds": offset["seconds"],
             "inner_seconds": offset["inner_seconds"], "wall_seconds": wall}
    _write_json(run_dir / "final.json", final)  # last: from now on the run is finished
    if ckpt.exists():
        ckpt.unlink()
    return _row(final, seed, cfg.metric)


CHECKPOINT = "checkpoint.pt"


def _row(final: dict, seed: int | str, metric: str) -> dict:
    """The summary.json row of a run from its final.json."""
    return {"seed": seed, "train": final["train"][metric], "val": final["val"][metric],
            "test": final["test"][metric], "work_units": final["work_units"],
            "seconds": final["seconds"], "inner_seconds": final["inner_seconds"]}


def finished_row(run_dir: Path, seed: int | str, metric: str) -> dict | None:
    """The summary row of a finished run in run_dir (None if it has not finished)."""
    f = run_dir / "final.json"
    if not f.is_file():
        return None
    try:
        return _row(json.loads(f.read_text()), seed, metric)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ExperimentError(f"{f} is unreadable ({type(e).__name__}: {e}): delete "
                              f"{run_dir} to rerun that run") from None


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _torch_save(obj: Any, path: Path) -> None:
    """torch.save, atomically (temporary file and rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _save_checkpoint(path: Path, model: nn.Module, state: dict) -> None:
    """The model after the finished levels, the records so far, the counters, the RNG."""
    _torch_save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "state": json.dumps(to_jsonable(state)), "rng": torch.get_rng_state()}, path)


def _load_checkpoint(path: Path, model0: nn.Module, follow: bool,
                     device: str) -> tuple[nn.Module, dict]:
    """(the model after state["level"] levels and refinements, the saved state)."""
    from ..models.resnet import refine_network

    try:
        ck = torch.load(path, weights_only=True)
        state = json.loads(ck["state"])
        model = model0
        for _ in range(int(state["level"])):
            model = refine_network(model, follow)
        model.load_state_dict(ck["model"])
        torch.set_rng_state(ck["rng"])
    except Exception as e:  # corrupt or from another version: say so, do not guess
        raise ExperimentError(f"{path} cannot be resumed ({type(e).__name__}: {e}); delete it "
                              "to rerun that run from the start") from None
    return model.to(device), state


def _split_info(data: Split) -> dict:
    """Split sizes and the JSON-able meta (index arrays, target mean, seed) of a split."""
    info: dict = {"n_train": len(data.x_train), "n_val": len(data.x_val),
                  "n_test": len(data.x_test)}
    for k, v in (data.meta or {}).items():
        if isinstance(v, np.ndarray | torch.Tensor | list | tuple | str | int | float | bool):
            info[k] = v
    return info


def reference_history(levels: int) -> dict:
    """The reference GNvpro history (hist_level1..L: Jc, F(val), TotalWork cumulated)."""
    ref = _reference()
    cols = [str(c) for c in ref["hist_columns"]]
    ij, iw, iv = cols.index("Jc"), cols.index("TotalWork"), cols.index("F(val)")
    out = {"method": "gnvpro (reference, Meganet.m)", "work_units": [], "loss": [],
           "val_loss": [], "level": [], "level_starts": []}
    offset = 0.0
    for lvl in range(1, levels + 1):
        key = f"hist_level{lvl}"
        if key not in ref:
            break
        h = np.asarray(ref[key])
        wu = h[:, iw].copy()
        wu[0] = 2.0  # row 0 shows 0; the initial evaluation costs 2
        out["level_starts"].append(offset)
        out["work_units"] += (offset + wu).tolist()
        out["loss"] += h[:, ij].tolist()
        out["val_loss"] += h[:, iv].tolist()
        out["level"] += [lvl] * len(h)
        offset += float(wu[-1])
    out["finals"] = {"train": float(ref["relerr_mean"][0]), "val": float(ref["relerr_mean"][1]),
                     "test": float(ref["relerr_mean"][2])}
    return out


def earlier_summary(path: Path, settings: dict) -> dict | None:
    """The summary.json at path (None if there is none); an error if its settings differ."""
    try:
        old = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise ExperimentError(f"{path} is unreadable ({e}): move it away or choose another "
                              "--out") from None
    if not isinstance(old, dict) or not isinstance(old.get("methods"), dict):
        raise ExperimentError(f"{path} is not a gnvpro summary (no \"methods\" table): move it "
                              "away or choose another --out")
    if old.get("settings") != settings:
        raise ExperimentError(
            f"{path.parent} holds results of a run with other settings (config, --budget-scale, "
            "--device, --data, --subset, --epochs or --levels differ); choose another --out"
        )
    return old


def write_summary(path: Path, summary: dict) -> dict:
    """Write summary merged with the rows of earlier runs in the same DIR (other (method, seed)
    pairs); atomic, so a concurrent run into the same DIR reads a whole file, and serialised
    by a lock file, so concurrent writers never lose each other's rows."""
    with _locked(path.with_name(f".{path.name}.lock")):
        old = earlier_summary(path, summary["settings"]) or {"methods": {}}
        methods = {m: list(rows) for m, rows in old["methods"].items()}
        for m, rows in summary["methods"].items():
            if not rows:  # only finished runs enter summary.json
                continue
            seeds = {json.dumps(r["seed"]) for r in rows}
            methods[m] = [r for r in methods.get(m, [])
                          if json.dumps(r["seed"]) not in seeds] + rows
        merged = {**summary, "methods": methods}
        _write_json(path, merged)
    return merged


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    """An exclusive advisory lock on `lock` (POSIX flock; no lock where there is none)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _claim(out: Path, settings: dict) -> None:
    """Mark DIR as a run directory of these settings; refuse one of other settings."""
    marker = out / ".gnvpro-settings.json"
    with _locked(out / ".summary.json.lock"):
        if marker.is_file():
            try:
                old = json.loads(marker.read_text())
            except (OSError, ValueError):
                old = None
            if old != settings:
                raise ExperimentError(
                    f"{out} holds results of a run with other settings (config, --budget-scale, "
                    "--device, --data, --subset, --epochs or --levels differ); choose another "
                    "--out"
                )
        else:
            _write_json(marker, settings)


def _prepare_out(out: Path) -> Path:
    """Create the output directory and check that it is a writable directory."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".gnvpro-write-test.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except FileExistsError:
        raise ExperimentError(f"--out {out} is a file, not a directory: choose another --out"
                              ) from None
    except OSError as e:
        raise ExperimentError(f"--out {out}: cannot write there ({e.strerror or e}): choose "
                              "another --out") from None
    return out


def run_experiment(
    cfg: ExperimentConfig,
    out: str | os.PathLike,
    methods: str | list[str] | None = None,
    seeds: str | list[int | str] | None = None,
    data_path: str | None = None,
    device: str = "cpu",
    budget_scale: float = 1.0,
    progress: bool = True,
    resume: bool = False,
) -> dict:
    """Run ``methods`` × ``seeds`` of the experiment; write the files; return summary.json.

    Finished (method, seed) runs already in ``out`` are kept, not rerun; with ``resume`` a
    killed run continues from its last checkpoint (else it starts afresh)."""
    if not (budget_scale > 0 and math.isfinite(budget_scale)):
        raise ExperimentError(f"--budget-scale must be a positive number, got {budget_scale}")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ExperimentError(f"--device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ExperimentError("--device cuda: no CUDA device is available")
    mlist = methods if isinstance(methods, list) else parse_methods(methods, cfg)
    slist = seeds if isinstance(seeds, list) else parse_seeds(seeds, cfg)
    _train_fn()
    out = _prepare_out(Path(out).expanduser())
    settings = {"config": cfg.to_dict(), "budget_scale": budget_scale, "device": device,
                "data_path": None if data_path is None
                else str(Path(data_path).expanduser().resolve())}
    settings = json.loads(json.dumps(to_jsonable(settings)))
    earlier_summary(out / "summary.json", settings)  # refuse a DIR of other settings up front
    _claim(out, settings)
    with _data_errors(f"the data file {data_path or '(default)'} of {cfg.name} is unreadable"):
        raw = load_problem_data(cfg, data_path, progress)
    summary: dict = {"experiment": cfg.name, "metric": cfg.metric, "settings": settings,
                     "methods": {m: [] for m in mlist}}
    if "ref" in slist:
        _write_json(out / "reference_history.json", reference_history(cfg.levels))

    bar = progress_bar(progress, len(mlist) * len(slist), "run", desc=cfg.name)
    try:
        for seed in slist:
            done = {m: finished_row(out / m / seed_label(seed), seed, cfg.metric) for m in mlist}
            if all(r is not None for r in done.values()):  # nothing left to do for this seed
                for m, r in done.items():
                    summary["methods"][m].append(r)
                write_summary(out / "summary.json", summary)
                if bar is not None:
                    bar.update(len(mlist))
                continue
            with _data_errors(f"the data of {cfg.name} (seed {seed}) cannot be used"):
                data = build_data(cfg, raw, seed)
            _check_split_finite(data, seed)
            model0 = build_model(cfg, data, seed)
            data_dev = to_device(data, device)
            for method in mlist:
                if bar is not None:
                    bar.set_postfix(method=method, seed=seed)
                m0 = model0
                if "model" in cfg.methods[method]:  # the method's own network settings
                    m0 = build_model(cfg, data, seed, method)
                row = run_one(cfg, method, m0, data_dev, seed,
                              out / method / seed_label(seed), budget_scale, device, progress,
                              data_path, resume)
                summary["methods"][method].append(row)
                write_summary(out / "summary.json", summary)  # partial results survive a crash
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return write_summary(out / "summary.json", summary)
