"""What a work unit costs in seconds in each of the hybrid's two modes (gnvpro.descent.Hybrid):
truncated Gauss-Newton (PreconditionedCG) and the L-BFGS direction (LBFGSTwoLoop), each run
alone with the default's other settings (strong Wolfe, inner_forcing = 1e-2), one thread.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/unit_cost.py --seconds 3 --out out/unit_cost

Per problem of benchmarks/peers.py (seed 0): after 3 warm-up iterations, iterations for
``--seconds`` CPU seconds; CPU milliseconds per work unit (passes over the data: 1 per value or
gradient, 2 per Gauss-Newton product) and their ratio cg / lbfgs, the price Hybrid.cg_price
stands for. ``--records DIR ...`` also reads the histories of finished `gnvpro run`s of the
hybrid (e.g. benchmarks/wall_time.py's OUT/budget/LABEL) and splits their seconds and units by
the mode each iteration ran (the record's ``descent``). Writes OUT/unit_cost.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402

import gnvpro  # noqa: E402
from gnvpro.descent import LBFGSTwoLoop, PreconditionedCG  # noqa: E402

PROBLEMS = ("wine", "breast-cancer", "synth20", "diabetes", "smooth10", "multi40", "cdr")


def modes(h: gnvpro.Hybrid) -> dict[str, object]:
    """The hybrid's two descents with its settings."""
    return {"cg": PreconditionedCG(h.max_products, h.rtol, h.memory),
            "lbfgs": LBFGSTwoLoop(h.memory)}


def per_unit(name: str, seconds: float) -> dict[str, tuple[int, float]]:
    """{mode: (iterations, CPU ms per work unit)} on problem ``name``, seed 0."""
    p = peers.make_problem(name, 0)
    out = {}
    for mode, descent in modes(gnvpro.Hybrid()).items():
        model = copy.deepcopy(p.model)
        opt = gnvpro.GNvpro(model, loss=p.kind, alpha_w=p.alpha_w, alpha_theta=p.alpha_theta,
                            config=gnvpro.GNvproConfig(descent=descent, threads=1))
        for _ in range(3):
            opt.step(p.x, p.y)
        w0, c0, k = opt.own_work, time.process_time(), 0
        while time.process_time() - c0 < seconds:
            opt.step(p.x, p.y)
            k += 1
        out[mode] = (k, 1e3 * (time.process_time() - c0) / (opt.own_work - w0))
    return out


def from_records(root: Path) -> dict[str, dict[str, tuple[int, float]]]:
    """{run: {mode: (iterations, ms per unit)}} from the history.jsonl files under ``root``
    (iterations within a level; the seconds are the run's clock)."""
    out = {}
    for f in sorted(root.rglob("history.jsonl")):
        recs = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        sums: dict[str, list[float]] = {}
        for a, b in zip(recs, recs[1:], strict=False):
            if b.get("level") != a.get("level") or "descent" not in b:
                continue
            s = sums.setdefault(b["descent"], [0, 0.0, 0.0])
            s[0] += 1
            s[1] += b["seconds"] - a["seconds"]
            s[2] += b["work_units"] - a["work_units"]
        out[str(f.parent.relative_to(root))] = {
            m: (int(k), 1e3 * sec / units if units > 0 else math.nan)
            for m, (k, sec, units) in sums.items()}
    return out


def _row(label: str, r: dict[str, tuple[int, float]]) -> str:
    cg, lb = r.get("cg", (0, math.nan)), r.get("lbfgs", (0, math.nan))
    return (f"| {label} | {cg[0]} | {cg[1]:.3g} | {lb[0]} | {lb[1]:.3g} | "
            f"{cg[1] / lb[1]:.2f} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", default=",".join(PROBLEMS))
    ap.add_argument("--seconds", type=float, default=3.0, help="CPU seconds per mode")
    ap.add_argument("--records", nargs="*", default=[], type=Path)
    ap.add_argument("--out", type=Path, default=Path("out/unit_cost"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    lines = [f"Milliseconds per work unit, each mode alone ({torch.get_num_threads()} thread)",
             "", "| problem / run | cg iterations | cg ms/unit | L-BFGS iterations | "
             "L-BFGS ms/unit | cg / L-BFGS |", "|---|---|---|---|---|---|"]
    for name in [s for s in a.problems.split(",") if s]:
        lines.append(_row(name, per_unit(name, a.seconds)))
        print(lines[-1], flush=True)
    for root in a.records:
        for run, r in from_records(root).items():
            lines.append(_row(f"{root}/{run}", r))
            print(lines[-1], flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "unit_cost.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
