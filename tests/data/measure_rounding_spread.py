"""Measure the spread that rounding alone gives the regression tests' numbers on one machine.

    OMP_NUM_THREADS=1 PYTHONPATH=src python tests/data/measure_rounding_spread.py OUT
    PYTHONPATH=src python tests/data/measure_rounding_spread.py OUT --summarize

The first form runs every regression-fixture run (tests/data/experiments.json: CDR 6 seeds,
the reference seed, the ellipse, the 8 CDR ablation variants; tests/data/iterates.json: the
trust-region and logistic iterates) once per rounding variant, each in a fresh process, and
writes OUT/VARIANT.json (what is there already is kept):

* ``base``: one thread, as the fixtures were written;
* ``permuted``: the training rows in another order (a fixed permutation; the sums over samples
  add in another order; first-order methods are left out: their mini-batches change);
* ``threads2``: two intra-op threads in every method;
* ``cbwr-compatible``, ``cbwr-avx2``: MKL's kernels switched by ``MKL_CBWR`` (as another CPU
  would switch them; the fixtures were written on an AVX2 path);
* ``aten-avx2``: torch's own vectorised kernels on the AVX2 path (``ATEN_CPU_CAPABILITY``).

The second form compares every variant with ``base`` and with the stored fixtures, writes
OUT/spread.json (every variant) and tests/data/rounding_spread.json (the envelope: per run and
quantity the largest deviation over all variants, against base and against the fixture), and
prints, per method and quantity, the largest relative deviation among the
first k records (k = 1, 2, 3, 5, 10), over all records, of the final metrics and of the work
units; tests/test_experiment_regression.py and tests/test_iterate_regression.py state these
numbers in their docstrings and set their tolerances a few times above them.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

DATA = Path(__file__).parent
ROOT = DATA.parents[1]
VARIANTS = {
    "base": {},
    "permuted": {},
    "threads2": {},
    "cbwr-compatible": {"MKL_CBWR": "COMPATIBLE"},
    "cbwr-avx2": {"MKL_CBWR": "AVX2"},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
}
PREFIXES = (1, 2, 3, 5, 10)


def _permute_training_rows() -> None:
    """Every split's training rows in a fixed other order (sums over samples reorder)."""
    import dataclasses

    import torch

    from gnvpro_experiments import data, runner

    build = data.build_data

    def permuted(cfg, raw, seed):
        split = build(cfg, raw, seed)
        perm = torch.randperm(len(split.x_train), generator=torch.Generator().manual_seed(7))
        return dataclasses.replace(split, x_train=split.x_train[perm], y_train=split.y_train[perm])

    runner.build_data = permuted


def _two_threads() -> None:
    import torch

    from gnvpro.methods import solver_method

    torch.set_num_threads(2)
    solver_method.auto_threads = lambda *a, **k: 2


def worker(variant: str, out: Path) -> None:
    """Run every fixture run under ``variant`` (already set in the environment) into ``out``."""
    sys.path[:0] = [str(DATA), str(ROOT / "benchmarks")]
    import make_iterate_fixture
    import torch
    from ablations import VARIANTS as ABLATIONS
    from ablations import variant_config
    from make_experiment_fixture import extract

    from gnvpro_experiments import load_config, run_experiment

    torch.set_num_threads(1)
    if variant == "permuted":
        _permute_training_rows()
    if variant == "threads2":
        _two_threads()
    fixture = json.loads((DATA / "experiments.json").read_text())
    got: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key in ("cdr", "ellipse", "cdr-ref"):
            f = fixture[key]
            methods = f["methods"].split(",")
            if variant == "permuted":
                methods = [m for m in methods if m not in ("adam", "sgd")]
            seeds = ["ref"] if f["seeds"] == "ref" else list(range(int(f["seeds"][-1]) + 1))
            run_experiment(load_config(f["experiment"]), Path(tmp) / key, methods=methods,
                           seeds=seeds, progress=False)
            got[key] = extract(Path(tmp) / key, f["metric"])
        raw = load_config("cdr").to_dict()
        got["cdr-ablations"] = {}
        for i, changes in enumerate(ABLATIONS.values()):
            d = Path(tmp) / f"abl{i}"
            run_experiment(variant_config(raw, changes), d, ["gnvpro"], list(range(6)),
                           progress=False)
            got["cdr-ablations"] |= {f"v{i}/{k}": v for k, v in extract(d, "rel_err").items()}
    if variant != "permuted":  # the iterate fixture's data are built inside its own module
        got["iterates"] = {"cdr": make_iterate_fixture.cdr(),
                           "logistic": make_iterate_fixture.logistic()}
    out.write_text(json.dumps(got) + "\n")


def _rel(a: float, b: float) -> float:
    if a == b:
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(b), 1e-300)


def _method(key: str) -> str:
    parts = key.split("/")
    return "/".join(parts[:-1])  # "v3/gnvpro" for ablations, "gn" otherwise


def _deviations(got: dict, want: dict) -> dict:
    """Per run: relative deviations of every record field, the final metrics, the work units."""
    out = {}
    for key, w in want.items():
        if key not in got:
            continue
        g = got[key]
        d = {}
        for field in ("loss", "val"):
            n = min(len(g[field]), len(w[field]))
            d[field] = [_rel(a, b) for a, b in zip(g[field][:n], w[field][:n], strict=True)]
            d[field + "_len"] = len(g[field]) != len(w[field])
        d["work_units"] = [_rel(a, b) for a, b in zip(g["work_units"], w["work_units"],
                                                      strict=False)]
        d["final_loss"] = max(_rel(g["final"][p]["loss"], w["final"][p]["loss"])
                              for p in w["final"])
        d["final_metric"] = max(_rel(g["final"][p][k], v) for p in w["final"]
                                for k, v in w["final"][p].items() if k != "loss")
        d["final_work_units"] = _rel(g["final_work_units"], w["final_work_units"])
        out[key] = d
    return out


def _summary(dev: dict) -> dict:
    """Per method: max deviation of the first k records, of all, of final metrics, of WU."""
    table: dict = {}
    for key, d in dev.items():
        row = table.setdefault(_method(key), {})
        for field in ("loss", "val"):
            for k in (*PREFIXES, None):
                name = f"{field}[:{k}]" if k else f"{field}[all]"
                row[name] = max(row.get(name, 0.0), max(d[field][:k], default=0.0))
        row["record_count_differs"] = row.get("record_count_differs", False) or d["loss_len"]
        for k in ("final_loss", "final_metric"):
            row[k] = max(row.get(k, 0.0), d[k])
        row["final_work_units"] = max(row.get("final_work_units", 0.0), d["final_work_units"])
        row["work_units[all]"] = max(row.get("work_units[all]", 0.0),
                                     max(d["work_units"], default=0.0))
    return table


def _iterate_deviation(got: dict, want: dict) -> dict:
    import numpy as np

    def rel(a, b):
        a, b = np.asarray(a, float), np.asarray(b, float)
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    return {name: {k: rel(got[name][k], want[name][k])
                   for k in ("loss", "grad_norm", "radius", "theta", "work_units")}
            for name in want}


def summarize(out: Path) -> dict:
    fixture = json.loads((DATA / "experiments.json").read_text())
    iterates = json.loads((DATA / "iterates.json").read_text())
    runs = {v: json.loads((out / f"{v}.json").read_text()) for v in VARIANTS
            if (out / f"{v}.json").exists()}
    base = runs["base"]
    result: dict = {}
    for v, got in runs.items():
        for ref_name, ref in (("vs-base", base), ("vs-fixture", None)):
            if v == "base" and ref_name == "vs-base":
                continue
            entry = result.setdefault(v, {}).setdefault(ref_name, {})
            for key in ("cdr", "ellipse", "cdr-ref", "cdr-ablations"):
                want = fixture[key]["runs"] if ref is None else ref[key]
                entry[key] = _summary(_deviations(got[key], want))
            if "iterates" in got:
                want = iterates if ref is None else ref["iterates"]
                entry["iterates"] = _iterate_deviation(got["iterates"], want)
    result = {"variants": result, "envelope": envelope(result)}
    (out / "spread.json").write_text(json.dumps(result, indent=1) + "\n")
    env = {**result["envelope"], "variants": sorted(runs)}
    (DATA / "rounding_spread.json").write_text(json.dumps(env, indent=1, sort_keys=True) + "\n")
    return result


def envelope(result: dict) -> dict:
    """Per experiment and method: the largest deviation over every variant, against base and
    against the stored fixture (what a test's tolerance must cover)."""
    env: dict = {}
    for refs in result.values():
        for entry in refs.values():
            for key, table in entry.items():
                for method, row in table.items():
                    e = env.setdefault(key, {}).setdefault(method, {})
                    for k, x in row.items():
                        e[k] = ((e.get(k, False) or x) if isinstance(x, bool)
                                else max(e.get(k, 0.0), x))
    return env


def _print(result: dict) -> None:
    print("# envelope: max over variants, vs base and vs fixture")
    for key, table in envelope(result).items():
        for method, row in table.items():
            cells = " ".join(f"{k}={x:.1e}" if isinstance(x, float) else f"{k}={x}"
                             for k, x in row.items())
            print(f"{key:14s} {method:12s} {cells}")
    if "--all" not in sys.argv:
        return
    for v, refs in result.items():
        for ref_name, entry in refs.items():
            print(f"\n## {v} {ref_name}")
            for key, table in entry.items():
                for method, row in table.items():
                    cells = " ".join(f"{k}={x:.1e}" if isinstance(x, float) else f"{k}={x}"
                                     for k, x in row.items())
                    print(f"{key:14s} {method:12s} {cells}")


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] == "--worker":
        worker(args[1], Path(args[2]))
        return
    out = Path(args[0])
    if "--summarize" in args:
        _print(summarize(out)["variants"])
        return
    out.mkdir(parents=True, exist_ok=True)
    only = [a for a in args[1:] if a in VARIANTS] or list(VARIANTS)
    for v in only:
        if (out / f"{v}.json").exists():
            continue
        env = {**os.environ, "OMP_NUM_THREADS": "1", **VARIANTS[v]}
        env["PYTHONPATH"] = f"{ROOT / 'src'}{os.pathsep}{env.get('PYTHONPATH', '')}"
        subprocess.run([sys.executable, __file__, "--worker", v, str(out / f"{v}.json")],
                       env=env, check=True)
        print(f"wrote {out / f'{v}.json'}", flush=True)


if __name__ == "__main__":
    main()
