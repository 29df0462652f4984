"""The files of a run directory: atomic JSON / torch writes, level checkpoints, finished-run
rows and summary.json (merged under a file lock, one settings per directory)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import ExperimentError, config_from_dict


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


def _write_bytes(path: Path, data: bytes) -> None:
    """Write atomically (temporary file, then rename): a reader never sees half a file, and a
    failed write (a full disk, a read-only directory) leaves no temporary file behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and not e.filename:  # a full disk: name the file
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise


def _write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (_write_bytes)."""
    _write_bytes(path, (json.dumps(to_jsonable(obj), indent=2) + "\n").encode())


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
    """Write text atomically (_write_bytes)."""
    _write_bytes(path, text.encode())


def _torch_save(obj: Any, path: Path) -> None:
    """torch.save, atomically: serialised in memory, then written by _write_bytes (so a full
    disk is an OSError naming the file, not torch's stream-writer message)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    _write_bytes(path, buf.getvalue())


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


def _load_checkpoint(path: Path, model0: nn.Module, follow: bool, device: str,
                     data: bytes | None = None) -> tuple[nn.Module, dict, dict | None]:
    """(the model after state["level"] levels and refinements, the saved state, the training
    state inside the next level or None), from ``path`` or from ``data``, its bytes as read
    (under torchrun by rank 0, for every rank)."""
    from .models.resnet import refine_network

    try:
        ck = torch.load(path if data is None else io.BytesIO(data), weights_only=True)
        state = json.loads(ck["state"])
        model = model0
        for _ in range(int(state["level"])):
            model = refine_network(model, follow)
        model.load_state_dict(ck["model"])
        bad = [k for k, v in ck["model"].items()
               if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise ValueError(f"the saved weights {bad[0]!r} hold NaN/Inf values")
        torch.set_rng_state(ck["rng"])
        mid = ck.get("mid")
        if mid is not None:
            mid = {**mid, "records": json.loads(mid["records"])}
    except Exception as e:  # corrupt or from another version: say so, do not guess
        raise ExperimentError(f"{path} cannot be resumed ({_why(e)}); delete it to rerun that "
                              "run from the start") from None
    return model.to(device), state, mid


def _why(e: BaseException) -> str:
    """One line on why a file could not be read (never torch's advice to unpickle it)."""
    text = str(e).strip()
    if "weights only load failed" in text.lower() or "weights_only" in text:
        return "it holds objects other than tensors and plain data, so it was not unpickled"
    line = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def settings_difference(old: Any, new: Any, where: str = "") -> str:
    """The first setting in which ``old`` (a directory's) and ``new`` (this call's) differ, as
    'NAME: A in the directory, B here' (an empty string when they are equal)."""
    names = {"budget_scale": "--budget-scale", "device": "--device", "data_path": "--data"}
    if isinstance(old, dict) and isinstance(new, dict):
        for k in [*old, *(k for k in new if k not in old)]:
            if old.get(k, _MISSING) != new.get(k, _MISSING):
                key = names.get(k, k) if not where else f"{where}.{k}"
                return settings_difference(old.get(k, _MISSING), new.get(k, _MISSING), key)
        return ""
    if old == new:
        return ""

    def show(v: Any) -> str:
        return "(not set)" if v is _MISSING else json.dumps(v)[:60]

    return f"{where or 'settings'}: {show(old)} in the directory, {show(new)} here"


_MISSING = object()


def _other_settings(out: Path, old: Any, new: dict) -> ExperimentError:
    diff = settings_difference(old, new) or "unknown"
    return ExperimentError(f"{out} holds results of a run with other settings ({diff}); "
                           "choose another --out or repeat the directory's settings")


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
    if current_form(old.get("settings")) != settings:
        raise _other_settings(path.parent, old.get("settings"), settings)
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
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another invocation writes the directory's files: wait
            print(f"gnvpro run: waiting for another process that writes {lock.parent} "
                  "(summary.json)", file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


MARKER = ".gnvpro-settings.json"
_OWNER = ".gnvpro-settings.pid"
DATA_MARKER = ".gnvpro-data.json"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def has_runs(out: Path) -> bool:
    """Whether ``out`` holds anything of a run: summary.json, or a METHOD/seed-S directory with
    records, a checkpoint or a final.json."""
    if (out / "summary.json").exists():
        return True
    for d in out.glob("*/seed-*"):
        if (d / "final.json").exists() or (d / CHECKPOINT).exists():
            return True
        h = d / "history.jsonl"
        if h.is_file() and h.stat().st_size > 0:
            return True
    return False


def _runs_idle(out: Path) -> bool:
    """Whether no process trains a run of ``out``: every METHOD/seed-S directory has a run lock
    that nobody holds (a directory without one, of an earlier version, counts as busy)."""
    for d in out.glob("*/seed-*"):
        lock = d / ".run.lock"
        if not lock.is_file():
            return False
        with run_lock(d) as holder:
            if holder is not None:
                return False
    return True


def resumable(out: Path) -> bool:
    """Whether ``out`` is a run directory (a settings marker, summary.json or a run in it)."""
    return out.is_dir() and ((out / MARKER).exists() or has_runs(out)
                             or any(out.glob("*/seed-*")))


def _read_json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def current_form(settings: Any) -> Any:
    """Run settings as this version writes them: the experiment's config re-read (method tables
    of earlier versions in today's form, gnvpro_experiments.config._upgrade); unreadable ones
    as they are (they compare unequal and the error names the difference)."""
    if not (isinstance(settings, dict) and isinstance(settings.get("config"), dict)):
        return settings
    try:
        config = config_from_dict(settings["config"], "the run directory").to_dict()
    except (ExperimentError, TypeError, ValueError, KeyError):
        return settings
    return json.loads(json.dumps(to_jsonable({**settings, "config": config})))


def _claim(out: Path, settings: dict, data: dict | None = None) -> str | None:
    """Mark DIR as a run directory of these settings (and of this data fingerprint); refuse one
    of other settings, naming the first setting that differs. The marker of a call that left no
    run behind (it failed before any run started) and whose process has ended is replaced.
    Returns a one-line note when the data fingerprint was recorded for a directory that had
    none (written by an earlier version), else None."""
    marker = out / MARKER
    note = None
    with _locked(out / ".summary.json.lock"):
        if marker.is_file():
            old = current_form(_read_json_or_none(marker))
            if old != settings:
                owner = _read_json_or_none(out / _OWNER)
                live = isinstance(owner, int) and owner != os.getpid() and _alive(owner)
                if has_runs(out) or live or not _runs_idle(out):
                    raise _other_settings(out, old, settings)
                _write_json(marker, settings)  # left by a failed call: nothing to protect
                with contextlib.suppress(OSError):
                    (out / DATA_MARKER).unlink()
        else:
            _write_json(marker, settings)
        _write_json(out / _OWNER, os.getpid())
        if data is not None:
            dfile = out / DATA_MARKER
            old_data = _read_json_or_none(dfile) if dfile.exists() else None
            if old_data is None:
                if has_runs(out):
                    note = (f"recorded the data fingerprint of {out} ({data['size']} bytes, "
                            f"sha256 {str(data['sha256'])[:12]}...): its runs had none, later "
                            "calls must read the same data")
                _write_json(dfile, data)
            elif not same_data(old_data, data):
                raise ExperimentError(
                    f"{out} holds runs on other data ({_show_data(old_data)} in the directory, "
                    f"{_show_data(data)} read now); give --data (or $GNVPRO_DATA) the "
                    "directory's data, or choose another --out")
    return note


def same_data(a: Any, b: Any) -> bool:
    """Whether two data fingerprints (size and hash) are of the same data."""
    return isinstance(a, dict) and isinstance(b, dict) and \
        (a.get("size"), a.get("sha256")) == (b.get("size"), b.get("sha256"))


def _show_data(d: Any) -> str:
    if not isinstance(d, dict):
        return "an unreadable fingerprint"
    return (f"{d.get('source', '?')}: {d.get('size', '?')} bytes, sha256 "
            f"{str(d.get('sha256'))[:12]}...")


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[int | None]:
    """Hold the lock of one run (METHOD/seed-S) while it runs: yields None when it is held, or
    the id of the live process that holds it (the caller then skips the run). The lock is a
    POSIX flock on run_dir/.run.lock: a process that dies releases it, so a stale lock is taken
    over. Where there is no flock (Windows) every run is treated as free."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield None
        return
    path = run_dir / ".run.lock"
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            text = fh.read().strip()
            yield int(text) if text.isdigit() else -1
            return
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield None
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()


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
