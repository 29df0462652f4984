"""Ablations of the Gauss-Newton VarPro variants on one experiment, in one process.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ablations.py cdr --seeds 0-5 --out runs/abl-cdr

Every variant is the experiment's "gnvpro" method with some settings changed (the paper's
trust region, step extrapolation, a bolder radius rule, and truncated Gauss-Newton with other
CG caps, tolerances or no L-BFGS preconditioner), run at the experiment's work budget after a
warm-up. Prints one summary table (final metrics, work units, seconds) per variant, and writes
OUT/ablations.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from gnvpro_experiments.config import config_from_dict, load_config
from gnvpro_experiments.report import summary_table
from gnvpro_experiments.runner import run_experiment
from gnvpro_experiments.selection import parse_seeds


def _tn(**descent: float) -> dict:
    """Truncated GN: PreconditionedCG (≤ 10 products, L-BFGS(10), rtol 1e-2 unless changed)."""
    return {"descent": {"kind": "cg", "max_products": 10, **descent},
            "search": {"kind": "strong_wolfe"}}


VARIANTS: dict[str, dict] = {  # changes to the [methods.gnvpro] table (the paper's trust region)
    "trust region (paper)": {},
    "trust region + extrapolation (try 2s)": {"search": {"extrapolate": True}},
    "trust region, radius ×2 when ρ > 0.5": {"search": {"rule": {"eta_expand": 0.5,
                                                                  "expand": 2.0}}},
    "tn, ≤ 10 CG, L-BFGS(10) preconditioner": _tn(),
    "tn, ≤ 5 CG": _tn(max_products=5),
    "tn, ≤ 20 CG": _tn(max_products=20),
    "tn, ≤ 10 CG, no preconditioner": _tn(memory=0),
    "tn, ≤ 10 CG, tolerance 1e-1": _tn(rtol=1e-1),
}


def variant_config(base: dict, changes: dict):
    raw = {**base, "methods": {**base["methods"]}}
    table = dict(raw["methods"]["gnvpro"])
    for k, v in changes.items():  # another kind replaces the descent / search, else merges
        old = table.get(k, {})
        table[k] = v if v.get("kind", old.get("kind")) != old.get("kind") else {**old, **v}
    raw["methods"] = {"gnvpro": table}
    raw["default_methods"] = ["gnvpro"]
    return config_from_dict(raw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment")
    ap.add_argument("--seeds", default="0-2")
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-scale", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = load_config(args.experiment)
    seeds = parse_seeds(args.seeds, base)
    out = Path(args.out)
    raw = base.to_dict()
    with tempfile.TemporaryDirectory() as tmp:  # warm-up of both code paths
        for i, name in enumerate(list(VARIANTS)[::3]):
            run_experiment(variant_config(raw, VARIANTS[name]), Path(tmp) / str(i), ["gnvpro"],
                           seeds[:1], budget_scale=0.05, progress=False)
    parts = [f"threads: {torch.get_num_threads()}; seeds: {args.seeds}"]
    for i, (name, changes) in enumerate(VARIANTS.items()):
        summary = run_experiment(variant_config(raw, changes), out / f"v{i}", ["gnvpro"], seeds,
                                 budget_scale=args.budget_scale, progress=False)
        table = summary_table(summary).replace("| gnvpro |", f"| {name} |")
        parts.append(table if i == 0 else table.split("\n", 2)[2])
        print(parts[-1], flush=True)
    (out / "ablations.md").write_text("\n".join(parts[:2]) + "\n" + "\n".join(parts[2:]) + "\n")


if __name__ == "__main__":
    main()
