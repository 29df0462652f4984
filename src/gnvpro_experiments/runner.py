"""Run an experiment: every method from the same split and θ0 per seed, multilevel, logged.

Layout of the output directory::

    DIR/summary.json                      final metrics per method and seed (schema below)
    DIR/reference_history.json            CDR with seed "ref": the reference GNvpro history
    DIR/METHOD/seed-S/config.json         the resolved settings of the run (with data_path,
                                          n_levels, the split's meta: sizes, indices, seed,
                                          and the processes it ran on: launch.py)
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
settings. Every file is written atomically (temporary file and rename; a failed write leaves
none); a killed run continues from its last checkpoint with ``--resume`` (else it starts
afresh). Each run is trained under its own lock (METHOD/seed-S/.run.lock, store.run_lock): an
invocation that reaches a run another live process holds skips it with a one-line message. The
data read (wherever it was found) is fingerprinted (size, sha256) in DIR/.gnvpro-data.json and
each config.json; a later invocation on other data is refused.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gnvpro.losses import make_loss
from gnvpro.metrics import predict, prediction_metrics
from gnvpro.progress import bar as progress_bar
from gnvpro.progress import on_terminal
from gnvpro.solver import Termination

from . import launch
from .config import ExperimentConfig, ExperimentError
from .data import (
    _check_split_finite,
    _data_errors,
    _regularizer,
    build_data,
    build_final_model,
    build_model,
    check_levels,
    data_fingerprint,
    found_data_file,
    load_problem_data,
    problem_of,
    to_device,
)
from .problems.base import Split
from .selection import parse_methods, parse_seeds
from .store import (
    CHECKPOINT,
    _claim,
    _load_checkpoint,
    _prepare_out,
    _row,
    _save_checkpoint,
    _torch_save,
    _write_json,
    _write_text,
    earlier_summary,
    finished_row,
    run_lock,
    seed_label,
    to_jsonable,
    write_summary,
)
from .train import METHODS, ResumeError, check_budget, train

__all__ = [
    "build_data", "build_final_model", "build_model", "load_problem_data", "predict",
    "earlier_summary", "run_experiment", "seed_label", "to_device", "to_jsonable",
    "write_summary",
]

_CUMULATIVE = ("work_units", "seconds", "inner_seconds")


# ----------------------------------------------------------------------------------------------
# data and models


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


def run_one(cfg: ExperimentConfig, method: str, model0: nn.Module, data: Split, seed: int | str,
            run_dir: Path, budget_scale: float, device: str, progress: bool,
            data_path: str | None = None, resume: bool = False,
            checkpoint_every: float = 300.0, fingerprint: dict | None = None) -> dict | None:
    """Train one method from θ0 through all levels; write the run's files; return its summary.

    A finished run (its final.json, written last, exists) is never rerun or rewritten: its row
    is returned. A run is trained under its lock (store.run_lock): a run that another live
    process holds is skipped with a one-line message (None is returned). After every level but
    the last, and inside a level at most every ``checkpoint_every`` seconds, a checkpoint
    (model, history, counters, RNG state, and inside a level the optimiser state and the
    schedule position) is written atomically; with ``resume`` a killed run continues from it.
    """
    ranks = launch.current()  # under torchrun rank 0 reads and writes the files for all
    done = ranks.decide(lambda: finished_row(run_dir, seed, cfg.metric))
    if done is not None:
        return done
    with contextlib.ExitStack() as held:
        holder = ranks.decide(lambda: held.enter_context(run_lock(run_dir)))
        if holder is not None:
            if ranks.writer:
                print(f"gnvpro run: {method} {seed_label(seed)} is being run by process "
                      f"{holder} ({run_dir}); skipped: that process adds it to summary.json",
                      file=sys.stderr, flush=True)
            return None
        # finished while we waited for the lock?
        done = ranks.decide(lambda: finished_row(run_dir, seed, cfg.metric))
        if done is not None:
            return done
        return _run_locked(cfg, method, model0, data, seed, run_dir, budget_scale, device,
                           progress, data_path, resume, checkpoint_every, fingerprint)


def _run_locked(cfg: ExperimentConfig, method: str, model0: nn.Module, data: Split,
                seed: int | str, run_dir: Path, budget_scale: float, device: str,
                progress: bool, data_path: str | None, resume: bool,
                checkpoint_every: float, fingerprint: dict | None) -> dict:
    """run_one's work, with the run's lock held (under torchrun: by rank 0, which alone writes
    the files; every rank trains)."""
    ranks = launch.current()
    ranks.check_stop()
    n_levels = cfg.method_levels(method)
    follow = bool(cfg.method_model(method).get("steps_follow_grid", False))
    model = copy.deepcopy(model0).to(device)
    history: list[dict] = []
    offset = dict.fromkeys(_CUMULATIVE, 0.0)
    level_cfgs: list[dict] = []
    first, wall0, mid = 1, 0.0, None
    ckpt = run_dir / CHECKPOINT
    saved = ranks.decide(lambda: ckpt.read_bytes() if resume and ckpt.is_file() else None)
    if saved is not None:
        model, state, mid = _load_checkpoint(ckpt, model, follow, device, saved)
        try:
            history, level_cfgs, offset = state["history"], state["level_cfgs"], state["offset"]
            first, wall0 = int(state["level"]) + 1, float(state["wall"])
            if not 1 <= first <= n_levels:
                raise ValueError(f"level {first - 1} of {n_levels} levels")
        except (KeyError, TypeError, ValueError) as e:
            raise ExperimentError(f"{ckpt} cannot be resumed (its state is not of this run: "
                                  f"{e}); delete it to rerun that run from the start") from None
    else:
        if resume and progress:
            print(f"gnvpro run: {method} {seed_label(seed)} has no checkpoint in {run_dir}: "
                  "starting it from the beginning", file=sys.stderr, flush=True)
        if ranks.writer and ckpt.exists():
            print(f"gnvpro run: {method} {seed_label(seed)}: starting afresh without --resume; "
                  f"the checkpoint of the killed run in {run_dir} is discarded", file=sys.stderr,
                  flush=True)
            ckpt.unlink()  # no --resume: start afresh
    if ranks.writer:
        _write_text(run_dir / "history.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    t_start = time.perf_counter()
    with (run_dir / "history.jsonl").open("a") if ranks.writer else open(os.devnull, "w") as fh:
        for level in range(first, n_levels + 1):
            kw = cfg.method_settings(method, level, budget_scale)
            kw.update(seed=int(seed) if isinstance(seed, int) else 0, progress=progress,
                      regularizer=_regularizer(cfg, model))
            level_cfgs.append({k: v for k, v in kw.items() if k != "regularizer"})

            def save_mid(inside: dict, level: int = level, model: nn.Module = model) -> None:
                _save_checkpoint(ckpt, model, {
                    "level": level - 1, "history": history, "level_cfgs": level_cfgs[:-1],
                    "offset": offset, "wall": wall0 + time.perf_counter() - t_start}, inside)

            try:
                records = train(method, model, data, kw,
                                checkpoint=save_mid if ranks.writer else None,
                                checkpoint_every=checkpoint_every,
                                resume=mid if level == first else None)
            except ResumeError as e:
                raise ExperimentError(f"{ckpt} cannot be resumed ({e}); delete it to rerun "
                                      "that run from the start") from None
            if ranks.writer:
                _say_termination(method, seed, level, records)
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
                from .models.resnet import refine_network

                model = refine_network(model, follow)
                if ranks.writer:
                    _save_checkpoint(ckpt, model, {
                        "level": level, "history": history, "level_cfgs": level_cfgs,
                        "offset": offset, "wall": wall0 + time.perf_counter() - t_start})
                ranks.check_stop()
    wall = wall0 + time.perf_counter() - t_start
    fin = final_metrics(cfg, model, data)  # every rank holds the whole split
    final = {**fin, "work_units": offset["work_units"], "seconds": offset["seconds"],
             "inner_seconds": offset["inner_seconds"], "wall_seconds": wall}
    if not ranks.writer:
        return _row(final, seed, cfg.metric)
    _torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                run_dir / "model.pt")
    _write_json(run_dir / "config.json", {
        "experiment": cfg.to_dict(), "method": method, "seed": seed, "device": device,
        "budget_scale": budget_scale, "levels": level_cfgs,
        "architecture": repr(model),
        # what the report needs to rebuild the split and the network
        "data_path": None if data_path is None else str(Path(data_path).expanduser().resolve()),
        "data": fingerprint,  # what was read, wherever it was found (size, sha256)
        "n_levels": cfg.method_levels(method),
        "split": _split_info(data),
        "processes": ranks.world,  # data-parallel under torchrun (launch.py)
    })
    _write_json(run_dir / "final.json", final)  # last: from now on the run is finished
    if ckpt.exists():
        ckpt.unlink()
    return _row(final, seed, cfg.metric)


def _say_termination(method: str, seed: int | str, level: int, records: list[dict]) -> None:
    """One line on stderr when a level diverged: the loop's Termination.DIVERGED (a non-finite
    objective), or an objective that grew a millionfold; says which model the run keeps."""
    first, last = records[0], records[-1]
    loss0, loss = float(first.get("loss", math.nan)), float(last.get("loss", math.nan))
    diverged = last.get("termination") == Termination.DIVERGED.value or not math.isfinite(loss)
    grew = math.isfinite(loss0) and math.isfinite(loss) and loss > 1e6 * max(abs(loss0), 1e-300)
    if not (diverged or grew):
        return
    best = [r for r in records if r.get("best_val")]
    if best:
        it = int(best[-1].get("iteration", 0))
        kept = ("the start model θ0 was restored (the best validation metric)" if it == 0 else
                f"the model of step {it} was restored (the best validation metric)")
    else:
        kept = "the model keeps the last iterate"
    what = ("diverged (non-finite objective)" if diverged else
            f"diverged (objective {loss0:.3g} → {loss:.3g})")
    print(f"gnvpro run: {method} {seed_label(seed)} level {level} {what}; {kept}; try a smaller "
          "step size", file=sys.stderr, flush=True)


def _split_info(data: Split) -> dict:
    """Split sizes and the JSON-able meta (index arrays, target mean, seed) of a split."""
    info: dict = {"n_train": len(data.x_train), "n_val": len(data.x_val),
                  "n_test": len(data.x_test)}
    for k, v in (data.meta or {}).items():
        if isinstance(v, np.ndarray | torch.Tensor | list | tuple | str | int | float | bool):
            info[k] = v
    return info


def _check_counts(cfg: ExperimentConfig, method: str, budget_scale: float) -> None:
    """Refuse what the settings would otherwise round silently: fractional epochs, batch or
    iteration counts, and a --budget-scale that leaves less than one iteration (a work budget
    below one work unit is kept: a step is started while the work spent is below it)."""
    raw = cfg.methods.get(method, {})
    for key in ("epochs", "n_batches", "iters_per_batch", "max_iter"):
        v = raw.get(key)
        if v is not None and not (isinstance(v, int | float) and not isinstance(v, bool)
                                  and float(v).is_integer() and v >= 1):
            raise ExperimentError(f"{method}: {key} must be a whole number >= 1, got {v!r}")
    if cfg.max_seconds is not None:
        return
    v, what = raw.get("max_iter"), "max_iter"
    spec = METHODS.get(method)
    if v is None and "epochs" in raw and spec is not None and spec.schedule == "sub-batches" \
            and budget_scale != 1.0:  # the config scales epochs x batches x iterations
        v = int(raw["epochs"]) * int(raw.get("n_batches", 4)) * int(raw.get("iters_per_batch",
                                                                            spec.iters))
        what = "epochs x batches x iterations per batch"
    if v is not None and round(float(v) * budget_scale) < 1:
        raise ExperimentError(
            f"--budget-scale {budget_scale:g} leaves {method} {float(v) * budget_scale:.3g} "
            f"iterations ({what} = {v:g}); use --budget-scale >= {1 / float(v):.3g}")


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
    checkpoint_every: float = 300.0,
) -> dict:
    """Run ``methods`` × ``seeds`` of the experiment; write the files; return summary.json.

    Finished (method, seed) runs already in ``out`` are kept, not rerun; with ``resume`` a
    killed run continues from its last checkpoint (else it starts afresh). Under torchrun
    (launch.process_group) every rank trains on its shard and rank 0 alone writes and prints."""
    if not (budget_scale > 0 and math.isfinite(budget_scale)):
        raise ExperimentError(f"--budget-scale must be a positive number, got {budget_scale}")
    if not (checkpoint_every >= 0 and math.isfinite(checkpoint_every)):
        raise ExperimentError(f"--checkpoint-every must be a number of seconds >= 0, got "
                              f"{checkpoint_every}")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ExperimentError(f"--device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ExperimentError("--device cuda: no CUDA device is available")
    mlist = methods if isinstance(methods, list) else parse_methods(methods, cfg)
    slist = seeds if isinstance(seeds, list) else parse_seeds(seeds, cfg)
    for m in mlist:
        _check_counts(cfg, m, budget_scale)
        for level in range(1, cfg.method_levels(m) + 1):
            check_budget(m, cfg.method_settings(m, level, budget_scale))
    check_levels(cfg, mlist)
    ranks = launch.current()
    if ranks.parallel:
        _check_data_parallel(cfg, mlist, budget_scale)
    progress = progress and ranks.writer
    where = Path(out).expanduser()
    out = ranks.decide(lambda: _prepare_out(where))  # rank 0 decides for all (launch.py)
    settings = {"config": cfg.to_dict(), "budget_scale": budget_scale, "device": device,
                "data_path": None if data_path is None
                else str(Path(data_path).expanduser().resolve())}
    settings = json.loads(json.dumps(to_jsonable(settings)))
    # refuse a DIR of other settings up front
    ranks.decide(lambda: earlier_summary(out / "summary.json", settings))
    with _data_errors(f"the data file {data_path or '(default)'} of {cfg.name} is unreadable"):
        raw = load_problem_data(cfg, data_path, progress)
        fingerprint = data_fingerprint(raw, data_path, found_data_file(cfg))
    ranks.same((fingerprint["size"], fingerprint["sha256"]), "data")
    # said at the end (errors stay one line)
    note = ranks.decide(lambda: _claim(out, settings, fingerprint))
    summary: dict = {"experiment": cfg.name, "metric": cfg.metric, "settings": settings,
                     "methods": {m: [] for m in mlist}}
    if "ref" in slist:
        ranks.decide(lambda: _write_json(out / "reference_history.json",
                                         problem_of(cfg).reference_history(cfg.levels)))

    bar = progress_bar(progress, len(mlist) * len(slist), "run", desc=cfg.name)
    try:
        for seed in slist:
            ranks.check_stop()
            done = ranks.decide(functools.partial(_finished_rows, out, mlist, seed, cfg.metric))
            if all(r is not None for r in done.values()):  # nothing left to do for this seed
                for m, r in done.items():
                    summary["methods"][m].append(r)
                ranks.decide(functools.partial(write_summary, out / "summary.json", summary))
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
                              data_path, resume, checkpoint_every, fingerprint)
                if row is not None:  # None: another process runs it
                    summary["methods"][method].append(row)
                    # partial results survive
                    ranks.decide(functools.partial(write_summary, out / "summary.json", summary))
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if note is not None and ranks.writer:
        print(f"gnvpro run: {note}", file=sys.stderr, flush=True)
    return ranks.decide(lambda: write_summary(out / "summary.json", summary))


def _finished_rows(out: Path, methods: list[str], seed: int | str, metric: str
                   ) -> dict[str, dict | None]:
    """The summary row of each method's finished run of ``seed`` in ``out`` (None: unfinished)."""
    return {m: finished_row(out / m / seed_label(seed), seed, metric) for m in methods}


def _check_data_parallel(cfg: ExperimentConfig, methods: list[str], budget_scale: float) -> None:
    """Refuse under torchrun what is not sharded by training rows: the sub-batch methods (their
    sub-batches are drawn from the whole training set). ADAM and SGD run under
    DistributedDataParallel with one shuffle of all rows (gnvpro.FirstOrder); seconds budgets
    run too: gnvpro.fit stops every process after the step at which the first one's clock
    reaches the budget."""
    for m in methods:
        spec = METHODS[m]
        if spec.schedule != "full":
            raise ExperimentError(
                f"{m} does not run under torchrun (its fixed sub-batches are drawn from the "
                "whole training set, not from one process's rows): run it in one process, "
                "without torchrun (into the same --out, whose table adds it)")
