"""Every deterministic number of the CDR (6 seeds) and ellipse (3 seeds) experiments — the
records' losses, work units and validation metrics, and the final train/val/test metrics of
gnvpro, gnvpro-tn, gn, lbfgs-vpro and adam — reproduces to 1e-10 against the values stored
before the one-engine refactor (tests/data/make_experiment_fixture.py wrote them)."""

import json
import math
from pathlib import Path

import pytest

from gnvpro.threads import intra_op_threads
from gnvpro_experiments import load_config, run_experiment
from gnvpro_experiments.problems.cdr import default_cdr_path

FIXTURE = json.loads((Path(__file__).parent / "data" / "experiments.json").read_text())
RTOL = 1e-10


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-13)


def _check(name: str, stored: dict, out: Path) -> None:
    from make_experiment_fixture import extract

    metric = stored["metric"]
    runs = extract(out, metric)
    assert sorted(runs) == sorted(stored["runs"])
    for key, want in stored["runs"].items():
        got = runs[key]
        for field in ("loss", "work_units", "val"):
            assert len(got[field]) == len(want[field]), (key, field)
            bad = [(i, a, b) for i, (a, b) in enumerate(zip(got[field], want[field], strict=True))
                   if not _close(a, b)]
            assert not bad, f"{name} {key} {field}: first differences {bad[:3]}"
        for part in ("train", "val", "test"):
            for k, v in want["final"][part].items():
                assert _close(got["final"][part][k], v), (key, part, k, got["final"][part][k], v)
        assert got["final_work_units"] == want["final_work_units"], key


CDR = pytest.param("cdr", marks=pytest.mark.skipif(not default_cdr_path().is_file(),
                                                    reason="CDR_Data.mat not found"))


@pytest.mark.slow
@pytest.mark.parametrize("name", [CDR, "ellipse"])
def test_experiment_numbers_reproduce(name, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "data"))
    stored = FIXTURE[name]
    seeds = [int(s) for s in range(int(stored["seeds"].split("-")[1]) + 1)]
    with intra_op_threads(1):  # the fixture's thread count (reduction order)
        run_experiment(load_config(name), tmp_path, methods=stored["methods"].split(","),
                       seeds=seeds, progress=False)
    _check(name, stored, tmp_path)
