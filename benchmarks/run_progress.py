"""Progress of unfinished (and finished) runs in a run directory, read from their checkpoints
and records: how far each run is in its schedule, its latest metrics, its seconds so far and the
seconds it still needs at its measured pace.

    .venv/bin/python benchmarks/run_progress.py results/cifar10 [--markdown]

The budget of a run is its schedule (epochs × sub-batches × steps per sub-batch for the
stochastic methods, epochs for SGD/ADAM) or its work budget; "needs" extrapolates the measured
seconds per unit of schedule (the machine's load while it ran is in those seconds).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch


def _records(run_dir: Path) -> tuple[list[dict], dict | None]:
    """The run's records (finished levels and the checkpointed part of the current one) and the
    checkpoint's schedule position."""
    hist = run_dir / "history.jsonl"
    recs = [json.loads(line) for line in hist.read_text().splitlines()] if hist.is_file() else []
    ck_path = run_dir / "checkpoint.pt"
    if not ck_path.is_file():
        return recs, None
    ck = torch.load(ck_path, weights_only=True)
    mid = ck.get("mid")
    if mid is None:
        return recs, None
    return recs + json.loads(mid["records"]), mid["position"]


def _schedule(method_cfg: dict) -> tuple[str, float]:
    """(unit, total) of a run's schedule from its method's settings ([methods.NAME])."""
    epochs = method_cfg.get("epochs", 1)
    if "iters_per_batch" in method_cfg:
        return "iterations", epochs * method_cfg.get("n_batches", 1) * method_cfg["iters_per_batch"]
    if "batch_size" in method_cfg:
        return "epochs", epochs
    return "work units", method_cfg.get("max_work", math.nan)


def progress(run_dir: Path) -> dict:
    recs, pos = _records(run_dir)
    final = run_dir / "final.json"
    settings = run_dir.parents[1] / ".gnvpro-settings.json"
    methods = json.loads(settings.read_text())["config"]["methods"] if settings.is_file() else {}
    unit, total = _schedule(methods.get(run_dir.parent.name, {}))
    last = recs[-1] if recs else {}
    done = last.get("work_units", 0.0) if unit == "work units" else last.get("iteration", 0)
    seconds = last.get("seconds", 0.0)
    finished = final.is_file()
    need = 0.0 if finished else (seconds / done * (total - done) if done else math.nan)
    acc = {k: v.get("accuracy", math.nan) for k, v in (last.get("metrics") or {}).items()}
    return {"run": f"{run_dir.parent.name}/{run_dir.name}", "finished": finished,
            "done": done, "total": total, "unit": unit, "work_units": last.get("work_units"),
            "seconds": seconds, "needs_seconds": need, "train": acc.get("train", math.nan),
            "val": acc.get("val", math.nan), "position": pos}


def _num(x: float | None, fmt: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    rows = [progress(d) for d in sorted(args.dir.glob("*/seed-*")) if d.is_dir()]
    head = ("| run | state | schedule done | work units | train acc | val acc | seconds so far "
            "| seconds still needed |\n|---|---|---|---|---|---|---|---|")
    print(head if args.markdown else "")
    for r in rows:
        state = "finished" if r["finished"] else "in progress"
        if r["work_units"] is None:
            state = "not started (no record yet)"
        cells = [f"{r['done']:g} / {r['total']:g} {r['unit']}", _num(r["work_units"], "g"),
                 _num(r["train"], ".4f"), _num(r["val"], ".4f"), _num(r["seconds"], ".0f"),
                 _num(r["needs_seconds"], ".0f")]
        print(f"| {r['run']} | {state} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
