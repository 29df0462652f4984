"""Every deterministic number of docs/results.md for CDR and the ellipse — the records' losses,
work units and validation metrics and the final train/val/test metrics of gnvpro, gnvpro-tn,
gn, lbfgs-vpro and adam on CDR (6 seeds and the reference seed) and the ellipse (3 seeds), and
of the 8 CDR ablation variants (6 seeds) — reproduces to 1e-10 against the values stored before
the one-engine refactor (tests/data/make_experiment_fixture.py wrote them).
GNVPRO_REGRESSION_RTOL=0 asks for bit-identical numbers instead."""

import json
import math
import os
import sys
from pathlib import Path

import pytest

from gnvpro.threads import intra_op_threads
from gnvpro_experiments import load_config, run_experiment
from gnvpro_experiments.problems.cdr import default_cdr_path, default_reference_path

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parents[1]
FIXTURE = json.loads((DATA / "experiments.json").read_text())
RTOL = float(os.environ.get("GNVPRO_REGRESSION_RTOL", "1e-10"))
HAVE_CDR = default_cdr_path().is_file() and default_reference_path().is_file()


def _close(a: float, b: float) -> bool:
    return a == b if RTOL == 0 else math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-13)


def _check(name: str, want_runs: dict, got_runs: dict) -> None:
    assert sorted(got_runs) == sorted(want_runs)
    for key, want in want_runs.items():
        got = got_runs[key]
        for field in ("loss", "work_units", "val"):
            assert len(got[field]) == len(want[field]), (key, field)
            bad = [(i, a, b) for i, (a, b) in enumerate(zip(got[field], want[field], strict=True))
                   if not _close(a, b)]
            assert not bad, f"{name} {key} {field}: first differences {bad[:3]}"
        for part in ("train", "val", "test"):
            for k, v in want["final"][part].items():
                assert _close(got["final"][part][k], v), (key, part, k, got["final"][part][k], v)
        assert got["final_work_units"] == want["final_work_units"], key


def _seeds(text: str) -> list:
    if text == "ref":
        return ["ref"]
    lo, hi = map(int, text.split("-"))
    return list(range(lo, hi + 1))


def _param(key: str):
    needs_cdr = FIXTURE[key]["experiment"] == "cdr"
    return pytest.param(key, marks=pytest.mark.skipif(needs_cdr and not HAVE_CDR,
                                                      reason="CDR data not found"))


@pytest.fixture
def extract(monkeypatch):
    monkeypatch.syspath_prepend(str(DATA))
    from make_experiment_fixture import extract

    return extract


@pytest.mark.slow
@pytest.mark.parametrize("key", [_param(k) for k in ("cdr", "ellipse", "cdr-ref")])
def test_experiment_numbers_reproduce(key, tmp_path, extract):
    stored = FIXTURE[key]
    with intra_op_threads(1):  # the fixture's thread count (reduction order)
        run_experiment(load_config(stored["experiment"]), tmp_path,
                       methods=stored["methods"].split(","), seeds=_seeds(stored["seeds"]),
                       progress=False)
    _check(key, stored["runs"], extract(tmp_path, stored["metric"]))


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_CDR, reason="CDR data not found")
def test_ablation_numbers_reproduce(tmp_path, extract, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("ablations", None)
    from ablations import VARIANTS, variant_config

    stored = FIXTURE["cdr-ablations"]
    raw = load_config("cdr").to_dict()
    got = {}
    with intra_op_threads(1):
        for i, changes in enumerate(VARIANTS.values()):
            out = tmp_path / f"v{i}"
            run_experiment(variant_config(raw, changes), out, ["gnvpro"], _seeds("0-5"),
                           progress=False)
            got |= {f"v{i}/{k}": v for k, v in extract(out, "rel_err").items()}
    _check("cdr-ablations", stored["runs"], got)
