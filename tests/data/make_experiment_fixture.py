"""Write tests/data/experiments.json: every deterministic number of docs/results.md for CDR
(6 seeds, the reference seed, the ablations) and the ellipse (3 seeds), for
tests/test_experiment_regression.py.

Run with the code whose numbers are to be kept, e.g. from a checkout of that commit:
    OMP_NUM_THREADS=1 PYTHONPATH=src python tests/data/make_experiment_fixture.py [RUNS_DIR]
RUNS_DIR (default: a temporary directory) receives `gnvpro run` output (cdr, ellipse,
cdr-ref) and `benchmarks/ablations.py cdr` output (abl); what is already there is read, not
rerun. Seconds are not kept (they depend on the machine); losses, work units and metrics of
every record and run are.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

METHODS = "gnvpro,gnvpro-tn,gn,lbfgs-vpro,adam"
EXPERIMENTS = {"cdr": ("cdr", "0-5", "rel_err"), "ellipse": ("ellipse", "0-2", "accuracy"),
               "cdr-ref": ("cdr", "ref", "rel_err")}
N_VARIANTS = 8  # benchmarks/ablations.py VARIANTS


def run(name: str, seeds: str, out: Path) -> None:
    if (out / "summary.json").exists():
        return
    subprocess.run([sys.executable, "-m", "gnvpro_experiments.cli", "run", name, "--seeds", seeds,
                    "--methods", METHODS, "--out", str(out)], check=True)


def ablations(out: Path) -> None:
    if (out / "ablations.md").exists():
        return
    subprocess.run([sys.executable, str(Path(__file__).parents[2] / "benchmarks" / "ablations.py"),
                    "cdr", "--seeds", "0-5", "--out", str(out)], check=True)


def extract(out: Path, metric: str) -> dict:
    runs = {}
    for hist in sorted(out.glob("*/seed-*/history.jsonl")):
        records = [json.loads(line) for line in hist.read_text().splitlines()]
        final = json.loads((hist.parent / "final.json").read_text())
        key = f"{hist.parent.parent.name}/{hist.parent.name}"
        runs[key] = {
            "loss": [r["loss"] for r in records],
            "work_units": [r["work_units"] for r in records],
            "val": [r["metrics"]["val"][metric] for r in records],
            "final": {part: {k: final[part][k] for k in ("loss", metric)}
                      for part in ("train", "val", "test")},
            "final_work_units": final["work_units"],
        }
    return runs


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    fixture = {}
    for key, (name, seeds, metric) in EXPERIMENTS.items():
        run(name, seeds, root / key)
        fixture[key] = {"experiment": name, "seeds": seeds, "methods": METHODS, "metric": metric,
                        "runs": extract(root / key, metric)}
    ablations(root / "abl")
    fixture["cdr-ablations"] = {"experiment": "cdr", "seeds": "0-5", "methods": "gnvpro",
                                "metric": "rel_err",
                                "runs": {f"v{i}/{k}": v for i in range(N_VARIANTS)
                                         for k, v in extract(root / "abl" / f"v{i}",
                                                             "rel_err").items()}}
    out = Path(__file__).with_name("experiments.json")
    out.write_text(json.dumps(fixture) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
