"""Run an experiment: every method from the same split and θ0 per seed, multilevel, logged.

Layout of the output directory::

    DIR/summary.json                      final metrics per method and seed (schema below)
    DIR/reference_history.json            CDR with seed "ref": the reference GNvpro history
    DIR/METHOD/seed-S/config.json         the resolved settings of the run
    DIR/METHOD/seed-S/history.jsonl       one training record per line (level, cumulative WU/s)
    DIR/METHOD/seed-S/final.json          train/val/test metrics of the final model
    DIR/METHOD/seed-S/model.pt            the final state_dict

summary.json: {"experiment", "metric", "methods": {METHOD: [{"seed", "train", "val", "test",
"work_units", "seconds", "inner_seconds"}, ...]}}.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..losses import make_loss
from ..metrics import prediction_metrics
from ..problems.base import Split
from .config import ExperimentConfig, ExperimentError, parse_methods, parse_seeds

__all__ = ["build_data", "build_model", "run_experiment", "seed_label", "to_jsonable"]

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
    path.write_text(json.dumps(to_jsonable(obj), indent=2) + "\n")


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
    """The raw data of the experiment, loaded once per run (not per seed)."""
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
    if cfg.problem == "ellipse":
        from ..problems.ellipse import ellipse_data

        return ellipse_data(int(d.get("n_per_class", 7000)), int(d.get("n_train", 5000)),
                            int(d.get("n_val", 1000)), seed=int(seed))
    raise ExperimentError(f"unknown problem {cfg.problem!r}")  # pragma: no cover


def build_model(cfg: ExperimentConfig, data: Split, seed: int | str) -> nn.Sequential:
    """θ0 of ``seed`` (head last): the reference network for CDR seed "ref", else seeded init."""
    m = cfg.model
    if cfg.problem == "cdr" and seed == "ref":
        from ..problems.cdr import reference_network

        return reference_network(_reference())
    g = torch.Generator().manual_seed(int(seed))
    n_in = int(data.x_train.shape[1])
    if m["kind"] == "resnet":
        from ..models.resnet import paper_network

        n_out = int(data.y_train.shape[1])
        return paper_network(
            n_in, n_out, int(m["width"]), n_nodes=int(m.get("n_nodes", 2)),
            T=float(m.get("T", 1.0)), n_steps=int(m.get("n_steps", 1)),
            open_bias=bool(m.get("open_bias", False)), generator=g, dtype=torch.float64,
        )
    from ..models.mlp import mlp

    return mlp(n_in, list(m["hidden"]), int(m.get("out_features", 1)),
               activation=str(m.get("activation", "tanh")), generator=g)


def _to_device(data: Split, device: str) -> Split:
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
        out[part] = prediction_metrics(loss, model(x), y, n_out)
    return out


# ----------------------------------------------------------------------------------------------
def _train_fn():
    from .. import baselines

    fn = getattr(baselines, "train", None)
    if fn is None:
        raise ExperimentError("gnvpro.baselines.train is not available in this installation")
    return fn


def run_one(cfg: ExperimentConfig, method: str, model0: nn.Module, data: Split, seed: int | str,
            run_dir: Path, budget_scale: float, device: str, progress: bool) -> dict:
    """Train one method from θ0 through all levels; write the run's files; return its summary."""
    from ..baselines.base import TrainSettings

    train = _train_fn()
    run_dir.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model0).to(device)
    history: list[dict] = []
    offset = dict.fromkeys(_CUMULATIVE, 0.0)
    level_cfgs = []
    t_start = time.perf_counter()
    with (run_dir / "history.jsonl").open("w") as fh:
        for level in range(1, cfg.levels + 1):
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
            if level < cfg.levels:
                from ..models.resnet import refine_network

                model = refine_network(model, bool(cfg.model.get("steps_follow_grid", False)))
    wall = time.perf_counter() - t_start
    fin = final_metrics(cfg, model, data)
    _write_json(run_dir / "final.json", {**fin, "work_units": offset["work_units"],
                                          "seconds": offset["seconds"],
                                          "inner_seconds": offset["inner_seconds"],
                                          "wall_seconds": wall})
    _write_json(run_dir / "config.json", {
        "experiment": cfg.to_dict(), "method": method, "seed": seed, "device": device,
        "budget_scale": budget_scale, "levels": level_cfgs,
        "architecture": repr(model),
    })
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, run_dir / "model.pt")
    metric = cfg.metric
    return {
        "seed": seed,
        "train": fin["train"][metric],
        "val": fin["val"][metric],
        "test": fin["test"][metric],
        "work_units": offset["work_units"],
        "seconds": offset["seconds"],
        "inner_seconds": offset["inner_seconds"],
    }


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


def run_experiment(
    cfg: ExperimentConfig,
    out: str | os.PathLike,
    methods: str | list[str] | None = None,
    seeds: str | list[int | str] | None = None,
    data_path: str | None = None,
    device: str = "cpu",
    budget_scale: float = 1.0,
    progress: bool = True,
) -> dict:
    """Run ``methods`` × ``seeds`` of the experiment; write the files; return summary.json."""
    if not (budget_scale > 0 and math.isfinite(budget_scale)):
        raise ExperimentError(f"--budget-scale must be a positive number, got {budget_scale}")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ExperimentError(f"--device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ExperimentError("--device cuda: no CUDA device is available")
    mlist = methods if isinstance(methods, list) else parse_methods(methods, cfg)
    slist = seeds if isinstance(seeds, list) else parse_seeds(seeds, cfg)
    _train_fn()
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    raw = load_problem_data(cfg, data_path, progress)
    summary: dict = {"experiment": cfg.name, "metric": cfg.metric,
                     "methods": {m: [] for m in mlist}}
    if "ref" in slist:
        _write_json(out / "reference_history.json", reference_history(cfg.levels))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mlist) * len(slist), desc=cfg.name, unit="run")
    try:
        for seed in slist:
            data = build_data(cfg, raw, seed)
            model0 = build_model(cfg, data, seed)
            data_dev = _to_device(data, device)
            for method in mlist:
                if bar is not None:
                    bar.set_postfix(method=method, seed=seed)
                row = run_one(cfg, method, model0, data_dev, seed,
                              out / method / seed_label(seed), budget_scale, device, progress)
                summary["methods"][method].append(row)
                _write_json(out / "summary.json", summary)  # partial results survive a crash
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    _write_json(out / "summary.json", summary)
    return summary
