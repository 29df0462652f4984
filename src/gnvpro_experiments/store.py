"""The files of a run directory: atomic JSON / torch writes, level checkpoints, finished-run
rows and summary.json (merged under a file lock, one settings per directory)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import ExperimentError


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


def _save_checkpoint(path: Path, model: nn.Module, state: dict, mid: dict | None = None) -> None:
    """The model (after the finished levels, or inside an unfinished one), the records so far,
    the counters, the RNG, and inside a level ``mid``: the training state that
    gnvpro_experiments.train.train(resume=...) continues from (optimiser state, schedule
    position, the level's records)."""
    _torch_save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "state": json.dumps(to_jsonable(state)), "rng": torch.get_rng_state(),
                 "mid": None if mid is None else {
                     **{k: v for k, v in mid.items() if k != "records"},
                     "records": json.dumps(to_jsonable(mid["records"]))}}, path)


def _load_checkpoint(path: Path, model0: nn.Module, follow: bool,
                     device: str) -> tuple[nn.Module, dict, dict | None]:
    """(the model after state["level"] levels and refinements, the saved state, the training
    state inside the next level or None)."""
    from .models.resnet import refine_network

    try:
        ck = torch.load(path, weights_only=True)
        state = json.loads(ck["state"])
        model = model0
        for _ in range(int(state["level"])):
            model = refine_network(model, follow)
        model.load_state_dict(ck["model"])
        torch.set_rng_state(ck["rng"])
        mid = ck.get("mid")
        if mid is not None:
            mid = {**mid, "records": json.loads(mid["records"])}
    except Exception as e:  # corrupt or from another version: say so, do not guess
        raise ExperimentError(f"{path} cannot be resumed ({type(e).__name__}: {e}); delete it "
                              "to rerun that run from the start") from None
    return model.to(device), state, mid


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
