"""What a user sees: every method at the paper's work budget, at equal wall time, and the time
each takes to reach a validation target, in ONE process after a warm-up.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/wall_time.py cdr --seeds 0-5 \
        --methods gnvpro,gnvpro-tn,lbfgs-vpro,adam --out runs/wall-cdr

(a) `gnvpro run` at the paper's budget (work units) for every method and seed;
(b) the same with every run given T seconds (``--max-seconds T``, equal shares per level),
    T = the mean time of the fastest GNvpro variant in (a) (or ``--seconds``);
(c) the first second at which the validation metric reaches ``--target`` (rel_err ≤ target,
    accuracy ≥ target), median over the seeds that reach it, from the records of (a) and (b).
``--variant LABEL=METHOD:KEY=VALUE,...`` adds METHOD with changed settings (``gnvpro run
--set`` syntax) as a row of its own, e.g. ``--variant lbfgs-k2=lbfgs-vpro:inner_forcing=1e-2``.
A warm-up run of every method on a small budget comes first, so that no method pays
torch.func's first-call cost. Writes OUT/wall_time.md (the three tables), OUT/compact.md (one
table: test metric at (a) and (b), time to target) and OUT/wall_time.json; ``--tables-only``
rewrites the tables from an earlier OUT without running anything.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import tempfile
from pathlib import Path

import torch

from gnvpro_experiments.config import load_config
from gnvpro_experiments.report import load_histories, summary_table
from gnvpro_experiments.runner import run_experiment
from gnvpro_experiments.selection import parse_methods, parse_seeds

TARGETS = {"cdr": 0.005, "dcr": 0.7, "ellipse": 0.995, "indian-pines": 0.80,
           "fashion-mnist": 0.75, "cifar10": 0.5}


def _reached(value: float, target: float, metric: str) -> bool:
    return value <= target if metric == "rel_err" else value >= target


def time_to_target(root: Path, method: str, metric: str, target: float) -> list[float | None]:
    """Per seed: the first cumulative seconds whose validation metric reaches the target."""
    out: list[float | None] = []
    for recs in load_histories(root, method).values():
        hit = None
        for r in recs:
            v = (r.get("metrics") or {}).get("val", {}).get(metric)
            if v is not None and math.isfinite(v) and _reached(v, target, metric):
                hit = float(r["seconds"])
                break
        out.append(hit)
    return out


def _target_table(roots: dict[str, Path], methods: list[str], metric: str,
                  target: float) -> str:
    cmp = "≤" if metric == "rel_err" else "≥"
    lines = [f"| method | seconds to val {metric} {cmp} {target:g} (median) | seeds reaching it "
             "(paper budget) | seeds reaching it (equal time) |", "|---|---|---|---|"]
    for m in methods:
        per = {k: time_to_target(r, m, metric, target) for k, r in roots.items()}
        hits = [t for ts in per.values() for t in ts if t is not None]
        med = f"{statistics.median(hits):.2f}" if hits else "not reached"
        counts = [f"{sum(t is not None for t in per[k])}/{len(per[k])}" if per[k] else "not run"
                  for k in roots]
        lines.append(f"| {m} | {med} | " + " | ".join(counts) + " |")
    return "\n".join(lines)


def _mean_std(rows: list[dict], key: str, digits: int) -> str:
    vals = [float(r[key]) for r in rows]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}g}"
    return f"{statistics.mean(vals):.{digits}g} ± {statistics.stdev(vals):.2g}"


def compact_table(out: Path, result: dict) -> str:
    """One row per method: test metric and seconds at (a), test metric at (b), time to target."""
    metric, target, T = result["budget"]["metric"] if result["budget"]["methods"] else \
        result["equal_time"]["metric"], result["target"], result["T"]
    cmp = "≤" if metric == "rel_err" else "≥"
    lines = [f"| method | test {metric} (a) paper budget | seconds (a) | test {metric} (b) at "
             f"T = {T:.3g} s | seconds to val {metric} {cmp} {target:g} |",
             "|---|---|---|---|---|"]
    for m in result["equal_time"]["methods"]:
        a = [{"test": r["test"], "seconds": r["seconds"]}
             for r in result["budget"]["methods"].get(m, [])]
        b = [{"test": r["test"]} for r in result["equal_time"]["methods"][m]]
        hits = [t for k in ("budget", "equal-time")
                for t in time_to_target(out / k, m, metric, target)]
        reached = [t for t in hits if t is not None]
        ttt = (f"{statistics.median(reached):.2f} ({len(reached)}/{len(hits)} runs)" if reached
               else f"not reached (0/{len(hits)} runs)")
        lines.append(f"| {m} | {_mean_std(a, 'test', 4)} | {_mean_std(a, 'seconds', 3)} | "
                     f"{_mean_std(b, 'test', 4)} | {ttt} |")
    return "\n".join(lines)


def _variants(cfg, specs: list[str]) -> list[tuple[str, str, object]]:
    """(label, method, config) for each LABEL=METHOD[:KEY=VALUE,...] (KEY=VALUE as --set)."""
    out = []
    for spec in specs:
        label, _, rest = spec.partition("=")
        method, _, settings = rest.partition(":")
        if not (label and method):
            raise SystemExit(f"--variant {spec!r}: expected LABEL=METHOD[:KEY=VALUE,...]")
        sets = [f"{method}.{kv}" for kv in settings.split(",") if kv]
        out.append((label, method, cfg.with_settings(sets)))
    return out


def _run_all(cfg, variants, root: Path, methods: list[str], seeds, **kw) -> dict:
    """run_experiment for the methods, then each variant's method moved to root/LABEL."""
    summary = run_experiment(cfg, root, methods, seeds, **kw) if methods else {"methods": {}}
    for label, method, vcfg in variants:
        with tempfile.TemporaryDirectory() as tmp:
            s = run_experiment(vcfg, Path(tmp), [method], seeds, **kw)
            shutil.rmtree(root / label, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(tmp) / method), str(root / label))
        summary.setdefault("metric", s.get("metric"))
        summary["methods"][label] = s["methods"][method]
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment")
    ap.add_argument("--seeds", default="0-2")
    ap.add_argument("--methods", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-scale", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, help="T for (b) (default: fastest GNvpro variant)")
    ap.add_argument("--target", type=float, help="validation target for (c)")
    ap.add_argument("--subset", type=int, help="image data: training images kept")
    ap.add_argument("--data", help="data path (as for gnvpro run)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=METHOD:KEY=VALUE",
                    help="a method with changed settings as its own row (repeatable)")
    ap.add_argument("--tables-only", action="store_true",
                    help="rewrite OUT/compact.md from an earlier run, run nothing")
    ap.add_argument("--equal-time-only", default="", help="methods run only in (b), e.g. adam "
                    "where its paper-budget run is too long to repeat (its (a) row: results.md)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.tables_only:
        result = json.loads((out / "wall_time.json").read_text())
        if args.target is not None:
            result["target"] = args.target
        table = compact_table(out, result)
        (out / "compact.md").write_text(table + "\n")
        print(table)
        return
    cfg = load_config(args.experiment).with_data(subset=args.subset)
    methods = parse_methods(args.methods, cfg) if args.methods or not args.variant else []
    variants = _variants(cfg, args.variant)
    seeds = parse_seeds(args.seeds, cfg)
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:  # warm-up: every code path once, then discarded
        _run_all(cfg, variants, Path(tmp) / "warm", methods, seeds[:1], data_path=args.data,
                 budget_scale=0.05 * args.budget_scale, progress=False)
    skip = set(parse_methods(args.equal_time_only, cfg)) if args.equal_time_only else set()
    budget = _run_all(cfg, variants, out / "budget", [m for m in methods if m not in skip],
                      seeds, data_path=args.data, budget_scale=args.budget_scale, progress=False)
    gn_variants = [m for m in methods if m.startswith("gnvpro")] or list(budget["methods"])
    T = args.seconds or min(
        statistics.mean(r["seconds"] for r in budget["methods"][m]) for m in gn_variants)
    equal = _run_all(cfg.with_max_seconds(T), [(lb, m, c.with_max_seconds(T))
                                                for lb, m, c in variants],
                     out / "equal-time", methods, seeds, data_path=args.data,
                     budget_scale=args.budget_scale, progress=False)
    methods = methods + [lb for lb, _, _ in variants]
    target = args.target if args.target is not None else TARGETS.get(cfg.name, math.nan)
    metric = cfg.metric
    text = "\n\n".join([
        f"threads: {torch.get_num_threads()}; seeds: {args.seeds}; budget scale "
        f"{args.budget_scale:g}" + (f"; equal-time only: {args.equal_time_only}" if skip else ""),
        "(a) at the paper's work budget\n\n" + summary_table(budget),
        f"(b) at equal wall time: every run given T = {T:.2f} s\n\n" + summary_table(equal),
        "(c) time to a validation target\n\n" + _target_table(
            {"budget": out / "budget", "equal": out / "equal-time"}, methods, metric, target),
    ])
    (out / "wall_time.md").write_text(text + "\n")
    result = {"T": T, "target": target, "budget": budget, "equal_time": equal}
    (out / "wall_time.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "compact.md").write_text(compact_table(out, result) + "\n")
    print(text + "\n\n" + compact_table(out, result))
    shutil.rmtree(out / "warm", ignore_errors=True)


if __name__ == "__main__":
    main()
