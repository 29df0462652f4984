"""Checkpoints inside a level: a run interrupted at any record and resumed gives the numbers of
the uninterrupted run (losses, work units, metrics) exactly, for every kind of method, on the
CDR data (least squares) and on the ellipse (logistic: the state holds the point's float64 θ
and W*, so the resumed Newton inner solve returns the saved W* bit for bit). The library-level
test, float32 and float64 and every method, is tests/test_state.py."""

import json
from pathlib import Path

import pytest

from gnvpro.threads import intra_op_threads
from gnvpro_experiments import load_config, run_experiment, runner
from gnvpro_experiments.problems.cdr import default_cdr_path

CDR = (Path(__file__).parent / "data" / "tiny_cdr.toml").read_text()
ELLIPSE = (Path(load_config("ellipse").source).read_text()
           .replace("n_per_class = 7000", "n_per_class = 300")
           .replace("n_train = 5000", "n_train = 300")
           .replace("n_val = 1000", "n_val = 100").replace("max_iter = 50", "max_iter = 8")
           .replace("max_work = 900", "max_work = 150").replace("max_work = 100", "max_work = 8"))
METHODS = ["gnvpro", "gnvpro-tn", "gn", "lbfgs-vpro", "adam"]


class Killed(Exception):
    pass


def _history(out, method, metric) -> list[float]:
    """Loss, work units, validation metric and iteration of every record, one flat list."""
    lines = (out / method / "seed-0" / "history.jsonl").read_text().splitlines()
    return [v for r in map(json.loads, lines)
            for v in (r["loss"], r["work_units"], r["metrics"]["val"][metric], r["iteration"])]


@pytest.mark.parametrize(("toml", "kill_at", "rel"), [
    pytest.param(CDR, 2, 0.0, marks=pytest.mark.skipif(not default_cdr_path().is_file(),
                                                       reason="CDR_Data.mat not found")),
    pytest.param(CDR, 5, 0.0, marks=pytest.mark.skipif(not default_cdr_path().is_file(),
                                                       reason="CDR_Data.mat not found")),
    (ELLIPSE, 3, 0.0)])
def test_a_run_killed_inside_a_level_resumes_to_the_same_numbers(tmp_path, monkeypatch, toml,
                                                                 kill_at, rel):
    (tmp_path / "t.toml").write_text(toml)
    cfg = load_config(tmp_path / "t.toml")
    with intra_op_threads(1):
        ref = run_experiment(cfg, tmp_path / "ref", METHODS, [0], progress=False)
        real, calls = runner._save_checkpoint, {"n": 0}

        def save_then_die(path, model, state, mid=None):
            real(path, model, state, mid)
            calls["n"] += 1 if mid is not None else 0
            if mid is not None and calls["n"] % kill_at == 0:
                raise Killed  # as if the process died right after this checkpoint

        monkeypatch.setattr(runner, "_save_checkpoint", save_then_die)
        out, kills = tmp_path / "out", 0
        while True:
            try:
                got = run_experiment(cfg, out, METHODS, [0], progress=False, resume=True,
                                     checkpoint_every=0.0)
                break
            except Killed:
                kills += 1
    assert kills >= len(METHODS)  # every method was interrupted inside a level, some often
    for m in METHODS:
        assert _history(out, m, cfg.metric) == pytest.approx(
            _history(tmp_path / "ref", m, cfg.metric), rel=rel, abs=0), m
        a, b = got["methods"][m][0], ref["methods"][m][0]
        assert [a[k] for k in ("train", "val", "test", "work_units")] == pytest.approx(
            [b[k] for k in ("train", "val", "test", "work_units")], rel=rel), m
