"""Checkpoints inside a level: a run interrupted at any record and resumed gives the numbers of
the uninterrupted run (losses, work units, metrics), for every kind of method."""

import json

import pytest

from gnvpro.threads import intra_op_threads
from gnvpro_experiments import load_config, run_experiment, runner

TOML = """
name = "tiny-cdr"
problem = "cdr"
metric = "rel_err"
loss = "least_squares"
levels = 2
default_seeds = "0"
[data]
n_train = 200
n_val = 100
n_test = 100
[model]
kind = "resnet"
width = 6
n_nodes = 2
T = 1.0
n_steps = 1
[train]
alpha_w = 1e-10
alpha_theta = 1e-10
[methods.gnvpro]
max_work = 60
max_krylov = 5
[methods.gnvpro-tn]
max_work = 60
subproblem = "tn"
max_krylov = 5
[methods.gn]
max_work = 60
max_krylov = 5
[methods.lbfgs-vpro]
max_work = 60
[methods.adam]
epochs = 4
lr = 1e-2
batch_size = 20
keep_best_val = true
"""
METHODS = ["gnvpro", "gnvpro-tn", "gn", "lbfgs-vpro", "adam"]


class Killed(Exception):
    pass


def _histories(out):
    return {m: [(r["loss"], r["work_units"], r["metrics"]["val"]["rel_err"], r["iteration"])
                for r in map(json.loads, (out / m / "seed-0" / "history.jsonl").read_text()
                             .splitlines())] for m in METHODS}


@pytest.mark.parametrize("kill_at", [2, 5])
def test_a_run_killed_inside_a_level_resumes_to_the_same_numbers(tmp_path, monkeypatch, kill_at):
    (tmp_path / "t.toml").write_text(TOML)
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
    assert _histories(out) == _histories(tmp_path / "ref")
    for m in METHODS:
        a, b = got["methods"][m][0], ref["methods"][m][0]
        assert (a["train"], a["val"], a["test"], a["work_units"]) == (
            b["train"], b["val"], b["test"], b["work_units"]), m
