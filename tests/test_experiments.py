"""The experiment runner, the report and the ``gnvpro`` CLI, end to end on tiny budgets."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gnvpro_experiments import cli
from gnvpro_experiments.config import (
    ExperimentError,
    available_experiments,
    config_from_dict,
    load_config,
)
from gnvpro_experiments.problems.cdr import default_cdr_path, default_reference_path
from gnvpro_experiments.selection import parse_methods, parse_seeds

HAVE_CDR = default_cdr_path().is_file() and default_reference_path().is_file()
needs_cdr = pytest.mark.skipif(not HAVE_CDR, reason="CDR_Data.mat / cdr_parity.npz not found")
SUMMARY_KEYS = {"seed", "train", "val", "test", "work_units", "seconds", "inner_seconds"}


def _check_run_dir(out, methods, seeds, metric):
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"experiment", "metric", "settings", "methods"}
    assert summary["metric"] == metric
    assert list(summary["methods"]) == methods
    for m in methods:
        rows = summary["methods"][m]
        assert [r["seed"] for r in rows] == seeds
        for r in rows:
            assert set(r) == SUMMARY_KEYS
            for k in SUMMARY_KEYS - {"seed"}:
                assert isinstance(r[k], float) and math.isfinite(r[k]), (m, k, r[k])
            assert r["work_units"] > 0 and r["seconds"] > 0
            if metric == "accuracy":
                assert 0.0 <= r["test"] <= 1.0
            else:
                assert r["test"] > 0
        for s in seeds:
            d = out / m / f"seed-{s}"
            recs = [json.loads(x) for x in (d / "history.jsonl").read_text().splitlines()]
            assert recs, (m, s)
            for rec in recs:
                assert {"loss", "work_units", "seconds", "level"} <= set(rec)
            wu = [rec["work_units"] for rec in recs]
            assert all(b >= a for a, b in zip(wu, wu[1:], strict=False)), "WU not cumulative"
            row = next(r for r in summary["methods"][m] if r["seed"] == s)
            assert row["work_units"] == pytest.approx(wu[-1])
            final = json.loads((d / "final.json").read_text())
            assert final["test"][metric] == pytest.approx(row["test"])
            assert json.loads((d / "config.json").read_text())["method"] == m
            assert (d / "model.pt").is_file()
    return summary


# ---------------------------------------------------------------------------------------------
def test_configs_load_and_validate():
    assert {"cdr", "dcr", "ellipse"} <= set(available_experiments())
    cdr = load_config("cdr")
    assert cdr.levels == 3 and cdr.model["width"] == 8 and cdr.metric == "rel_err"
    s1, s3 = cdr.method_settings("gnvpro", 1), cdr.method_settings("gnvpro", 3, 0.5)
    assert s1["max_work"] == 200 and s3["max_work"] == 100
    assert s3["alpha_theta"] == pytest.approx(1e-10 / 4) and s3["alpha_w"] == 1e-10
    assert cdr.method_settings("adam", 1)["max_work"] == 50
    assert cdr.method_settings("adam", 1)["batch_size"] == 2
    assert load_config("dcr").method_settings("gnvpro", 1)["max_work"] == 400
    ell = load_config("ellipse")
    assert ell.method_settings("gnvpro", 1, 0.1)["max_iter"] == 5
    assert config_from_dict(cdr.to_dict()) == config_from_dict(cdr.to_dict())
    assert config_from_dict(ell.to_dict()).model == ell.model
    assert parse_seeds("0-2,5", cdr) == [0, 1, 2, 5]
    assert parse_seeds("ref,0", cdr) == ["ref", 0]
    assert parse_methods("gnvpro, adam", cdr) == ["gnvpro", "adam"]
    with pytest.raises(ExperimentError, match="ref"):
        parse_seeds("ref", ell)
    with pytest.raises(ExperimentError, match="unknown method"):
        parse_methods("gnvpro,newton", cdr)
    with pytest.raises(ExperimentError, match="unknown experiment"):
        load_config("nope")
    bad = cdr.to_dict()
    bad["model"]["widht"] = 8
    with pytest.raises(ExperimentError, match="widht"):
        config_from_dict(bad)
    bad = cdr.to_dict()
    bad["methods"]["adam"].pop("max_work")
    with pytest.raises(ExperimentError, match="budget"):
        config_from_dict(bad)


@needs_cdr
def test_cli_run_cdr_and_report(tmp_path, capsys):
    out = tmp_path / "cdr"
    rc = cli.main(["run", "cdr", "--seeds", "ref,0", "--methods", "gnvpro,adam",
                   "--budget-scale", "0.05", "--out", str(out), "--no-progress"])
    assert rc == 0
    summary = _check_run_dir(out, ["gnvpro", "adam"], ["ref", 0], "rel_err")
    # three levels, α_θ halved per level, the grid refined (2 → 3 → 5 nodes)
    recs = [json.loads(x) for x in (out / "gnvpro/seed-ref/history.jsonl").read_text().splitlines()]
    assert sorted({r["level"] for r in recs}) == [1, 2, 3]
    cfg = json.loads((out / "gnvpro/seed-ref/config.json").read_text())
    assert [lv["alpha_theta"] for lv in cfg["levels"]] == pytest.approx([1e-10, 5e-11, 2.5e-11])
    assert [lv["max_work"] for lv in cfg["levels"]] == pytest.approx([10.0] * 3)
    sd = torch.load(out / "gnvpro/seed-ref/model.pt", weights_only=True)
    assert sd["0.theta"].shape == (5, 8, 8)
    # GNvpro beats the starting point by far even on 10 WU per level
    assert summary["methods"]["gnvpro"][0]["train"] < 0.2
    ref = json.loads((out / "reference_history.json").read_text())
    assert ref["work_units"][-1] == pytest.approx(680, abs=40)
    assert len(ref["loss"]) == 13 + 9 + 7
    assert "| gnvpro |" in capsys.readouterr().out

    rc = cli.main(["report", str(out)])
    assert rc == 0
    md = (out / "report.md").read_text()
    assert "| gnvpro | 2 |" in md and "| adam | 2 |" in md and "±" in md
    for png in ("loss_vs_work.png", "loss_vs_seconds.png"):
        assert (out / png).stat().st_size > 10_000
    assert md in capsys.readouterr().out

    # a later run into the same DIR adds to its table (a rerun pair replaces its row) ...
    before = json.loads((out / "summary.json").read_text())
    rc = cli.main(["run", "cdr", "--seeds", "0", "--methods", "adam,gn", "--budget-scale",
                   "0.05", "--out", str(out), "--no-progress"])
    assert rc == 0
    after = json.loads((out / "summary.json").read_text())
    assert after["methods"]["gnvpro"] == before["methods"]["gnvpro"]
    assert [r["seed"] for r in after["methods"]["adam"]] == ["ref", 0]
    assert after["methods"]["adam"][0] == before["methods"]["adam"][0]
    assert [r["seed"] for r in after["methods"]["gn"]] == [0]
    # ... and a run of other settings is refused before it computes anything
    capsys.readouterr()
    rc = cli.main(["run", "cdr", "--seeds", "1", "--methods", "adam", "--budget-scale", "0.1",
                   "--out", str(out), "--no-progress"])
    assert rc == 2 and "other settings" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text()) == after
    assert not (out / "adam/seed-1").exists()


def test_cli_run_ellipse_and_report(tmp_path):
    out = tmp_path / "ell"
    methods = "gnvpro,gn"
    rc = cli.main(["run", "ellipse", "--methods", methods, "--seeds", "1",
                   "--budget-scale", "0.1", "--out", str(out), "--no-progress"])
    assert rc == 0
    summary = _check_run_dir(out, methods.split(","), [1], "accuracy")
    recs = (out / "gnvpro/seed-1/history.jsonl").read_text().splitlines()
    assert 1 <= sum(json.loads(r)["iteration"] > 0 for r in recs) <= 5  # max_iter 50 × 0.1
    assert summary["methods"]["gnvpro"][0]["train"] > 0.5
    assert cli.main(["report", str(out)]) == 0
    assert (out / "decision_boundary.png").stat().st_size > 10_000
    for png in ("val_accuracy_vs_work.png", "val_accuracy_vs_seconds.png"):
        assert (out / png).stat().st_size > 10_000
    assert (out / "report.md").read_text().startswith("# ellipse")


def test_cli_errors(tmp_path, capsys):
    rc = cli.main(["run", "cdr", "--data", "/nonexistent.mat", "--out", str(tmp_path / "x"),
                   "--budget-scale", "0.01", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "/nonexistent.mat" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err

    assert cli.main(["run", "cdr", "--methods", "gnvpro,newton", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "newton" in err and len(err.strip().splitlines()) == 1

    assert cli.main(["run", "no-such-experiment"]) == 2
    assert "no-such-experiment" in capsys.readouterr().err
    assert cli.main(["run", "ellipse", "--seeds", "ref"]) == 2
    assert cli.main(["run", "cdr", "--seeds", "x-y"]) == 2
    assert cli.main(["report", str(tmp_path / "empty")]) == 2
    assert "summary.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse usage errors also exit with 2
        cli.main(["run"])
    assert e.value.code == 2


def test_cli_data_dcr_and_run_from_toml(tmp_path, capsys):
    """`gnvpro data dcr` writes a loadable file; a DCR config given by path runs on it."""
    from gnvpro_experiments.config import CONFIG_DIR
    from gnvpro_experiments.problems.dcr import load_dcr

    npz = tmp_path / "dcr.npz"
    assert cli.main(["data", "dcr", "--n", "30", "--seed", "3", "--out", str(npz)]) == 0
    data = load_dcr(npz)
    assert data["Y"].shape == (30, 3) and data["D"].shape == (30, 882) and data["seed"] == 3
    assert str(npz) in capsys.readouterr().out

    text = (CONFIG_DIR / "dcr.toml").read_text()
    for old, new in (("n = 10000", "n = 30"), ("n_train = 8000", "n_train = 20"),
                     ("n_val = 1000", "n_val = 5"), ("n_test = 1000", "n_test = 5")):
        assert old in text
        text = text.replace(old, new)
    toml = tmp_path / "dcr_tiny.toml"
    toml.write_text(text)
    out = tmp_path / "dcr_run"
    rc = cli.main(["run", str(toml), "--data", str(npz), "--methods", "gnvpro", "--seeds", "0",
                   "--levels", "2", "--budget-scale", "0.02", "--out", str(out),
                   "--no-progress"])
    assert rc == 0
    _check_run_dir(out, ["gnvpro"], [0], "rel_err")
    cfg = json.loads((out / "gnvpro/seed-0/config.json").read_text())
    assert len(cfg["levels"]) == 2 and cfg["levels"][0]["max_work"] == pytest.approx(8.0)
    sd = torch.load(out / "gnvpro/seed-0/model.pt", weights_only=True)
    assert sd["0.theta"].shape == (3, 16, 16)  # width 16, 2 → 3 nodes
    assert cli.main(["report", str(out)]) == 0  # the DCR problem's figure
    assert (out / "dcr_patterns.png").stat().st_size > 10_000
    assert "DCR measurement patterns: 3 test samples of gnvpro seed-0" in (
        out / "report.md").read_text()


def test_max_seconds_replaces_the_work_budget():
    """--max-seconds T: every level gets T / levels seconds and no work or iteration budget."""
    from gnvpro_experiments.config import ExperimentError, load_config

    cfg = load_config("cdr").with_max_seconds(3.0)
    kw = cfg.method_settings("gnvpro", 2)
    assert kw["max_seconds"] == pytest.approx(1.0) and kw["max_work"] >= 1e12
    assert kw["max_iter"] is None
    fm = load_config("fashion-mnist").with_max_seconds(10.0)
    assert fm.method_settings("gnvpro-tn-stochastic", 1)["epochs"] >= 10**6
    assert "max_seconds" not in load_config("cdr").method_settings("gnvpro", 1)
    with pytest.raises(ExperimentError, match="max-seconds"):
        load_config("cdr").with_max_seconds(-1.0)


# ---------------------------------------------------------------------------------------------
# a new experiment: one problem (here in the test), one TOML, one registration
SINE_TOML = """
name = "sine"
problem = "test-sine"
metric = "rel_err"
loss = "least_squares"
levels = 1
default_seeds = "0,1"
[data]
n = 60
n_train = 40
n_val = 10
[model]
kind = "mlp"
hidden = [8]
[train]
alpha_w = 1e-8
alpha_theta = 1e-8
[methods.gnvpro]
max_iter = 2
"""


def _sine_problem():
    from gnvpro_experiments.problems.base import Problem, Split

    class Sine(Problem):
        """y = sin(πx), x ~ U[-1, 1] (n samples, drawn once); seed s permutes them."""

        name = "test-sine"
        data_keys = frozenset({"n", "n_train", "n_val"})

        def load(self, cfg, data_path, progress):
            g = torch.Generator().manual_seed(0)
            x = 2 * torch.rand(int(cfg.data["n"]), 1, generator=g, dtype=torch.float64) - 1
            return x, torch.sin(math.pi * x)

        def split(self, cfg, raw, seed):
            (x, y), d = raw, cfg.data
            p = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
            a, b = int(d["n_train"]), int(d["n_train"]) + int(d["n_val"])
            return Split(x[p[:a]], y[p[:a]], x[p[a:b]], y[p[a:b]], x[p[b:]], y[p[b:]],
                         meta={"seed": seed})

        def figures(self, root, summary):
            from gnvpro_experiments.report import load_run, pyplot

            _, _, data, model = load_run(root / "gnvpro" / "seed-0", "gnvpro")
            plt = pyplot()
            fig, ax = plt.subplots()
            with torch.no_grad():
                ax.plot(data.x_test[:, 0], model(data.x_test)[:, 0], ".")
            path = root / "sine_fit.png"
            fig.savefig(path)
            plt.close(fig)
            return [path], "Sine fit of gnvpro, seed 0.\n"

    return Sine()


def test_a_new_experiment_is_a_problem_a_toml_and_a_registration(tmp_path):
    from gnvpro_experiments import report, run_experiment
    from gnvpro_experiments.problems.registry import PROBLEMS, register

    toml = tmp_path / "sine.toml"
    toml.write_text(SINE_TOML)
    with pytest.raises(ExperimentError, match="problem must be one of cdr, .*got 'test-sine'"):
        load_config(toml)
    problem = register(_sine_problem())
    try:
        cfg = load_config(toml)
        out = tmp_path / "out"
        summary = run_experiment(cfg, out, progress=False)
        assert summary["experiment"] == "sine"
        _check_run_dir(out, ["gnvpro"], [0, 1], "rel_err")
        info = json.loads((out / "gnvpro/seed-1/config.json").read_text())
        assert info["split"]["n_train"] == 40 and info["split"]["n_test"] == 10
        md = report(out)
        assert "Sine fit of gnvpro, seed 0." in md and "![sine_fit](sine_fit.png)" in md
        assert (out / "sine_fit.png").stat().st_size > 1000
        # the problem's data keys and its (absent) reference seed
        with pytest.raises(ExperimentError, match="no data option subset"):
            cfg.with_data(subset=10)
        assert cfg.with_data(n_train=30).data["n_train"] == 30
        with pytest.raises(ExperimentError, match="seed 'ref'.*only for the cdr experiment"):
            parse_seeds("ref", cfg)
        with pytest.raises(ExperimentError, match=r"unknown key\(s\) n_test in \[data\]"):
            config_from_dict({**cfg.to_dict(), "data": {"n": 9, "n_test": 3}})
        with pytest.raises(ValueError, match="exists already"):
            register(_sine_problem())
        assert register(problem) is problem  # registering the same object again: no-op
        with pytest.raises(TypeError, match="expected a Problem"):
            register(object())
    finally:
        PROBLEMS.pop("test-sine", None)
    with pytest.raises(ExperimentError, match="problem must be one of"):
        load_config(toml)
    md = report(out)  # a run of a problem no longer registered: the table, no problem figures
    assert "| gnvpro | 2 |" in md and "sine" not in md.split("## Figures")[1]
