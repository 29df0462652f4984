"""Reliability, second round (issue 21): no finished run is lost, no input is accepted silently,
nothing hangs, every user error is one line.

Run directories: a per-run lock (a second invocation skips a run another live process holds; a
stale lock is taken over), finished runs are never rewritten, the data's fingerprint is part of
the settings a run resumes under, --resume names what differs, SIGTERM checkpoints and says how
to resume, a full disk is one line and leaves no temporary file. The library: ``fit`` checks
everything before the first step. The report lists what it cannot draw and draws the rest.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gnvpro import FirstOrder, GNvpro, GNvproConfig, KeepBest, fit
from gnvpro.checkpoint import checkpoint_state, save_checkpoint
from gnvpro.loop import Position
from gnvpro_experiments import cli, runner
from gnvpro_experiments.models import mlp
from gnvpro_experiments.store import run_lock

F64 = torch.float64
TINY = Path(__file__).parent / "data" / "tiny_cdr.toml"


# ------------------------------------------------------------------------------------ helpers
def _mat(path: Path, seed: int = 0, n: int = 800) -> Path:
    import scipy.io

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"Y": rng.standard_normal((55, n)),
                                 "C": rng.standard_normal((72, n))})
    return path


def _args(out: Path, data: Path | None, methods: str = "adam", *more: str) -> list[str]:
    a = ["run", str(TINY), "--seeds", "0", "--methods", methods, "--no-progress",
         "--out", str(out)]
    return a + (["--data", str(data)] if data is not None else []) + list(more)


def _main(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = int(e.code or 0)
    return rc, capsys.readouterr().err.strip()


def _one_line(rc: int, err: str, pattern: str) -> None:
    import re

    assert rc == 2, (rc, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert re.search(pattern, err), f"{err!r} !~ {pattern!r}"


def _records(d: Path) -> list[tuple]:
    lines = (d / "history.jsonl").read_text().splitlines()
    return [(r["level"], r["iteration"], r["loss"], r["work_units"])
            for r in map(json.loads, lines)]


def _files(d: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns)
            for p in d.iterdir() if p.is_file() and not p.name.startswith(".")}


def _tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def _cmd(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "gnvpro_experiments.cli", *argv]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, f"the process ended before {path} appeared"
        assert time.monotonic() - t0 < timeout, f"{path} did not appear"
        time.sleep(0.002)


# ------------------------------------------------------------------ 1. data loss: run locks
def test_a_second_invocation_skips_a_run_another_process_holds_and_no_record_is_lost(
        tmp_path, capsys):
    data = _mat(tmp_path / "d" / "CDR_Data.mat")
    argv = _args(tmp_path / "out", data, "gnvpro", "--budget-scale", "2")
    assert cli.main(_args(tmp_path / "ref", data, "gnvpro", "--budget-scale", "2")) == 0
    run = tmp_path / "out" / "gnvpro" / "seed-0"
    first = subprocess.Popen(_cmd(argv), env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(run / "history.jsonl", first)  # written under the run's lock
        first.send_signal(signal.SIGSTOP)  # the first invocation is mid-level, lock held
        assert not (run / "final.json").exists(), "the first run finished before the overlap"
        second = subprocess.run(_cmd(argv), env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        assert f"is being run by process {first.pid}" in second.stderr, second.stderr
        assert "skipped" in second.stderr
        assert not (run / "final.json").exists()  # the second one wrote nothing of the run
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    ref = tmp_path / "ref" / "gnvpro" / "seed-0"
    assert _records(run) == _records(ref)  # every record survived, none twice
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())["methods"]["gnvpro"]
    assert [r["seed"] for r in rows] == [0]
    before = _files(run)
    for extra in ([], ["--resume"]):  # a finished run is never rewritten
        assert cli.main(argv + extra) == 0
        assert _files(run) == before


def test_a_stale_run_lock_is_taken_over_and_a_held_one_is_reported(tmp_path):
    run = tmp_path / "m" / "seed-0"
    run.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (run / ".run.lock").write_text(str(dead.pid))  # left by a process that died
    with run_lock(run) as holder:
        assert holder is None  # taken over: the kernel released the dead process's lock
        assert (run / ".run.lock").read_text() == str(os.getpid())
        with run_lock(run) as other:  # a second claimant (another open file) is refused
            assert other == os.getpid()
    with run_lock(run) as holder:
        assert holder is None


# ---------------------------------------------------- 2. silent: settings that identify the data
def test_resume_refuses_other_data_found_through_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GNVPRO_DATA", str(_mat(tmp_path / "a" / "CDR_Data.mat").parent))
    out = tmp_path / "out"
    assert _main(capsys, _args(out, None))[0] == 0
    fp = json.loads((out / ".gnvpro-data.json").read_text())
    assert fp["size"] > 0 and len(fp["sha256"]) == 64
    assert fp["source"] == str((tmp_path / "a" / "CDR_Data.mat").resolve())  # where it was found
    assert json.loads((out / "adam/seed-0/config.json").read_text())["data"] == fp
    before = _files(out / "adam" / "seed-0")
    monkeypatch.setenv("GNVPRO_DATA", str(_mat(tmp_path / "b" / "CDR_Data.mat", seed=1).parent))
    for extra in (["--resume"], ["--seeds", "1"]):
        rc, err = _main(capsys, _args(out, None) + extra)
        _one_line(rc, err, r"holds runs on other data .*sha256")
    assert _files(out / "adam" / "seed-0") == before
    assert not (out / "adam" / "seed-1").exists()
    # the same data in another place is the same data
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    monkeypatch.setenv("GNVPRO_DATA", str(tmp_path / "c"))
    assert _main(capsys, _args(out, None, "adam", "--resume"))[0] == 0


def test_resume_names_the_setting_that_differs(tmp_path, capsys):
    data = _mat(tmp_path / "CDR_Data.mat")
    out = tmp_path / "out"
    assert _main(capsys, _args(out, data))[0] == 0
    rc, err = _main(capsys, _args(out, data, "adam", "--resume", "--set", "adam.lr=0.02"))
    _one_line(rc, err, r"config\.methods\.adam\.lr: 0\.01 in the directory, 0\.02 here")
    rc, err = _main(capsys, _args(out, data, "adam", "--resume", "--budget-scale", "2"))
    _one_line(rc, err, r"--budget-scale: 1\.0 in the directory, 2\.0 here")


def test_resume_on_a_directory_with_nothing_to_resume_says_so(tmp_path, capsys):
    data = _mat(tmp_path / "CDR_Data.mat")
    for out in (tmp_path / "never", tmp_path):  # missing, and a directory of no runs
        rc, err = _main(capsys, _args(out, data, "adam", "--resume"))
        _one_line(rc, err, r"--resume: .* holds no runs to resume; run without --resume")
    assert not (tmp_path / "never").exists()


def test_a_directory_without_a_fingerprint_resumes_and_records_it(tmp_path, capsys):
    """Run directories of the earlier version (no data fingerprint) still resume and grow."""
    data = _mat(tmp_path / "CDR_Data.mat")
    out = tmp_path / "out"
    assert _main(capsys, _args(out, data))[0] == 0
    (out / ".gnvpro-data.json").unlink()
    rc, err = _main(capsys, _args(out, data, "adam", "--resume", "--seeds", "0,1"))
    assert rc == 0, err
    assert "recorded the data fingerprint" in err and len(err.splitlines()) == 1, err
    assert (out / ".gnvpro-data.json").is_file()
    assert _main(capsys, _args(out, data, "gnvpro"))[0] == 0  # a new method, no --resume


def test_a_failed_first_call_does_not_block_the_corrected_one(tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = _main(capsys, _args(out, _mat(tmp_path / "small.mat", n=50)))
    _one_line(rc, err, r"CDR data has 50 samples")  # it failed after claiming the directory
    rc, err = _main(capsys, _args(out, _mat(tmp_path / "good.mat")))
    assert rc == 0, err
    # a marker of other settings over a run directory without records: taken over only when
    # nobody can be training there (a free run lock), else refused naming the difference
    other = tmp_path / "other"
    (other / "adam" / "seed-0").mkdir(parents=True)
    (other / ".gnvpro-settings.json").write_text(json.dumps({"config": {}, "device": "cpu"}))
    rc, err = _main(capsys, _args(other, tmp_path / "good.mat"))
    _one_line(rc, err,
              r"other settings \(config\.name: \(not set\) in the directory, \"tiny-cdr\" here")
    (other / "adam" / "seed-0" / ".run.lock").write_text("1")
    rc, err = _main(capsys, _args(other, tmp_path / "good.mat"))
    assert rc == 0, err


# ------------------------------------------------ 3. obscure: one line, SIGTERM, full disk, bugs
def test_sigterm_checkpoints_and_says_how_to_resume(tmp_path, capsys):
    data = _mat(tmp_path / "CDR_Data.mat")
    argv = _args(tmp_path / "out", data, "gnvpro", "--budget-scale", "3",
                 "--checkpoint-every", "1000")
    assert cli.main(_args(tmp_path / "ref", data, "gnvpro", "--budget-scale", "3")) == 0
    run = tmp_path / "out" / "gnvpro" / "seed-0"
    proc = subprocess.Popen(_cmd(argv), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(run / "history.jsonl", proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before SIGTERM arrived")
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in last and "--resume" in last, err
    assert "Traceback" not in err
    assert not _tmp_files(tmp_path / "out")
    assert cli.main(argv + ["--resume"]) == 0
    assert _records(run) == _records(tmp_path / "ref" / "gnvpro" / "seed-0")


def test_sigterm_mid_level_writes_a_checkpoint_first(tmp_path, capsys, monkeypatch):
    """The signal arrives after the third step of a level (deterministically: sent from the
    loop's stop check): the loop checkpoints that step, the resumed run has every number."""
    from gnvpro_experiments import stop

    data = _mat(tmp_path / "CDR_Data.mat")
    argv = _args(tmp_path / "out", data, "gnvpro", "--checkpoint-every", "1000")
    assert cli.main(_args(tmp_path / "ref", data, "gnvpro")) == 0
    real, calls = stop.requested, {"n": 0}

    def signal_at_third_record() -> bool:
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler only sets the flag
        return real()

    monkeypatch.setattr(stop, "requested", signal_at_third_record)
    rc, err = _main(capsys, argv)
    assert rc == 128 + signal.SIGTERM, err
    assert "SIGTERM received" in err and "--resume" in err.splitlines()[-1], err
    run = tmp_path / "out" / "gnvpro" / "seed-0"
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ck["mid"] is not None and len(json.loads(ck["mid"]["records"])) == 3
    monkeypatch.setattr(stop, "requested", real)
    assert _main(capsys, argv + ["--resume"])[0] == 0
    assert _records(run) == _records(tmp_path / "ref" / "gnvpro" / "seed-0")


def _broken_checkpoint(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """A mid-level checkpoint of gnvpro seed 0 (the run killed right after writing it)."""
    data = _mat(tmp_path / "CDR_Data.mat")
    out = tmp_path / "out"
    real = runner._save_checkpoint

    class Killed(BaseException):  # as if the process died: nothing catches it
        pass

    def save_then_die(path, model, state, mid=None):
        real(path, model, state, mid)
        if mid is not None:
            raise Killed

    monkeypatch.setattr(runner, "_save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        cli.main(_args(out, data, "gnvpro", "--checkpoint-every", "0"))
    monkeypatch.setattr(runner, "_save_checkpoint", real)
    return out / "gnvpro" / "seed-0" / "checkpoint.pt", data


def test_a_foreign_or_corrupt_checkpoint_is_one_line(tmp_path, capsys, monkeypatch):
    ck, data = _broken_checkpoint(tmp_path, monkeypatch)
    out = ck.parents[2]
    saved = torch.load(ck, weights_only=True)
    # another method's checkpoint
    other = out / "lbfgs-vpro" / "seed-0" / "checkpoint.pt"
    other.parent.mkdir(parents=True)
    shutil.copy(ck, other)
    rc, err = _main(capsys, _args(out, data, "lbfgs-vpro", "--resume"))
    _one_line(rc, err, r"checkpoint\.pt cannot be resumed \(its training state does not fit")
    # NaN weights
    bad = {**saved, "model": {k: torch.full_like(v, math.nan) if v.is_floating_point() else v
                              for k, v in saved["model"].items()}}
    torch.save(bad, ck)
    rc, err = _main(capsys, _args(out, data, "gnvpro", "--resume"))
    _one_line(rc, err, r"cannot be resumed \(.*NaN/Inf")
    # a schedule position out of range
    torch.save({**saved, "mid": {**saved["mid"], "position": {**saved["mid"]["position"],
                                                              "epoch": 99}}}, ck)
    rc, err = _main(capsys, _args(out, data, "gnvpro", "--resume"))
    _one_line(rc, err, r"cannot be resumed \(.*outside the schedule")
    # a pickle that is not plain data: refused, without torch's advice to unpickle it
    torch.save({"model": object.__new__(KeepBest)}, ck)
    rc, err = _main(capsys, _args(out, data, "gnvpro", "--resume"))
    _one_line(rc, err, r"not unpickled")
    assert "weights_only" not in err
    torch.save(saved, ck)  # the real one still resumes
    assert _main(capsys, _args(out, data, "gnvpro", "--resume"))[0] == 0


def test_an_internal_error_shows_its_traceback_marked_as_a_bug(tmp_path, capsys, monkeypatch):
    def broken(*a, **k):
        return {}["no such key"]  # a bug, not a raise statement

    monkeypatch.setattr(runner, "run_experiment", broken)
    rc, err = _main(capsys, _args(tmp_path / "o", None))
    assert rc == 1 and "Traceback" in err and "internal error (a bug" in err, err
    # a ValueError raised on purpose by gnvpro's checks is a user error (one line)
    monkeypatch.setattr(runner, "run_experiment", lambda *a, **k: fit(None, [], max_iter=1))
    rc, err = _main(capsys, _args(tmp_path / "o", None))
    _one_line(rc, err, r"method must be a gnvpro method")


@pytest.mark.parametrize(("argv", "pattern"), [
    (["--budget-scale", "1e13"], r"max_work 6e\+14 \(>= 1e12 means no work budget\)"),
    (["--levels", "40"], r"40 levels: the last network of gnvpro would have \d+ nodes"),
    (["--levels", "1000"], r"--levels 1000: every level doubles the network"),
    (["--threads", "0"], r"--threads must be in \[1, 1024\], got 0"),
    (["--threads", "100000"], r"--threads must be in \[1, 1024\]"),
    (["--checkpoint-every", "nan"], r"--checkpoint-every must be a number of seconds >= 0"),
    (["--max-seconds", "inf"], r"--max-seconds must be a positive number"),
    (["--methods", "adam", "--set", "adam.epochs=1.5"],
     r"adam: epochs must be a whole number >= 1, got 1\.5"),
    (["--set", "gnvpro.max_iter=3", "--budget-scale", "0.1"],
     r"--budget-scale 0\.1 leaves gnvpro 0\.3 iterations \(max_iter = 3\)"),
])
def test_impossible_numbers_are_one_line(tmp_path, capsys, argv, pattern):
    rc, err = _main(capsys, _args(tmp_path / "o", _mat(tmp_path / "d.mat"), "gnvpro", *argv))
    _one_line(rc, err, pattern)
    assert not (tmp_path / "o" / "gnvpro").exists()


def test_data_workers_are_checked_not_clamped(tmp_path, capsys):
    rc, err = _main(capsys, ["data", "dcr", "--n", "2", "--workers", "0", "--out",
                             str(tmp_path / "d.npz")])
    _one_line(rc, err, r"--workers must be >= 1, got 0")


def test_divergence_is_reported_with_the_model_kept(tmp_path, capsys):
    rc, err = _main(capsys, _args(tmp_path / "o", _mat(tmp_path / "d.mat"), "adam",
                                  "--set", "adam.lr=1e30"))
    assert rc == 0, err
    assert "adam seed-0 level 1 diverged" in err and "θ0 was restored" in err, err


def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True)
    return r.returncode == 0


@contextlib.contextmanager
def _full_disk(tmp_path: Path, size: str = "64k"):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, size):
        pytest.skip("needs root and a tmpfs mount (a small full disk)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(tmp_path, capsys):
    data = _mat(tmp_path / "CDR_Data.mat")
    with _full_disk(tmp_path) as disk:
        out = disk / "out"
        rc, err = _main(capsys, _args(out, data, "gnvpro,adam", "--seeds", "0,1"))
        _one_line(rc, err, r"no space left on the device .*free some space or choose another")
        assert not _tmp_files(disk)
        # the library's own checkpoint writer: an OSError naming the file, no temporary left
        model = mlp(3, [4], 2, dtype=F64)
        opt = GNvpro(model)
        with pytest.raises(OSError) as e:
            for i in range(200):
                save_checkpoint(disk / f"ck{i}.pt", model, opt, pad=torch.zeros(4096, dtype=F64))
        assert e.value.errno == 28 and e.value.filename.endswith(".pt")
        assert not _tmp_files(disk)


# ------------------------------------------------------ 4. the library checks before any step
def _tiny(n: int = 12):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g, dtype=F64)
    y = torch.stack([torch.sin(x[:, 0]), torch.cos(x[:, 2]) * x[:, 0]], 1)
    model = mlp(3, [4], 2, dtype=F64, generator=g)
    return model, x, y, GNvpro(model, config=GNvproConfig(descent={"max_products": 4}))


def _weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(("call", "err", "pattern"), [
    (lambda o, x, y: fit(o, itertools.repeat((x, y)), max_iter=2), TypeError,
     r"batches must be a sequence .* with a length"),
    (lambda o, x, y: fit(o, ((x, y) for _ in range(2)), max_iter=2), TypeError,
     r"\(generator\): pass list"),
    (lambda o, x, y: fit(o, iter([(x, y)]), max_iter=2), TypeError, r"with a length"),
    (lambda o, x, y: fit(o, [(x, y)] * (10**6 + 1), max_iter=2), ValueError,
     r"1000001 batches, more than 1000000"),
    (lambda o, x, y: fit(o, [(x, y), (x.float(), y)], max_iter=2), TypeError,
     r"batches\[1\]: x has dtype torch\.float32"),
    (lambda o, x, y: fit(o, [(x, y), (x[:, :2], y)], max_iter=2), ValueError,
     r"batches\[1\]: x has 2 features"),
    (lambda o, x, y: fit(o, [(x, y), (x * math.nan, y)], max_iter=2), ValueError,
     r"batches\[1\]: x contains \d+ NaN"),
    (lambda o, x, y: fit(o, [(x, y), (x, y[:, :1])], max_iter=2), ValueError,
     r"batches\[1\]: y"),
    (lambda o, x, y: fit(o, [(x, y)], max_iter=2, val_every=0), ValueError,
     r"val_every must be"),
    (lambda o, x, y: fit(o, [(x, y)], epochs=3), ValueError, r"needs a budget"),
    (lambda o, x, y: fit(o, [(x, y)], n_samples=1, max_iter=2), ValueError,
     r"n_samples \(1\) is smaller than a batch \(12 samples\)"),
    (lambda o, x, y: fit(o, [(x, y)], max_iter=2, checkpoint_every=math.nan), ValueError,
     r"checkpoint_every must be a finite number"),
    (lambda o, x, y: fit(o, [(x, y)], max_iter=2, epochs=1.5), TypeError,
     r"epochs must be an integer"),
    (lambda o, x, y: fit(o, [(x, y)], max_iter=2, callbacks=[print, 3]), TypeError,
     r"callbacks\[1\] must be callable"),
    (lambda o, x, y: fit(o, [(x, y)], max_iter=2, callbacks=print), TypeError,
     r"callbacks must be a list"),
    (lambda o, x, y: fit(o, [(x, y)], max_iter=2, checkpoint="ck.pt"), TypeError,
     r"checkpoint must be callable"),
    (lambda o, x, y: fit(o, [(x, y)], max_iter=2, start=Position(epoch=4)), ValueError,
     r"start\.epoch must be in \[1, 1\]"),
    (lambda o, x, y: fit(o.model, [(x, y)], max_iter=2), TypeError,
     r"method must be a gnvpro method"),
    (lambda o, x, y: KeepBest(o.model, "yes"), TypeError, r"classification=.* True"),
    (lambda o, x, y: KeepBest("model", True), TypeError, r"model=.* nn\.Module"),
], ids=["repeat", "generator", "iterator", "too-many", "dtype", "width", "nan", "targets",
        "val-every", "epochs-no-budget", "n-samples", "checkpoint-every-nan",
        "fractional-epochs", "callback", "callbacks-not-list", "hook", "start", "method",
        "keepbest-classification", "keepbest-model"])
def test_fit_checks_everything_before_the_first_step(call, err, pattern):
    model, x, y, opt = _tiny()
    before = _weights(model)
    t0 = time.monotonic()
    with pytest.raises(err, match=pattern):
        call(opt, x, y)
    assert time.monotonic() - t0 < 5  # refused, never materialised or run
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(model), strict=True))
    assert opt.work == 0  # not even the first evaluation


def test_first_order_state_is_a_copy_not_the_live_moments():
    model, x, y, _ = _tiny()
    opt = FirstOrder(model)
    opt.step(x, y)
    sd, ck = opt.state_dict(), checkpoint_state(model, opt)
    frozen = [{k: v.clone() for k, v in s.items() if torch.is_tensor(v)}
              for s in sd["optimizer"]["state"].values()]
    opt.step(x, y)
    for saved in (sd, ck["optimizer"]):
        for f, s in zip(frozen, saved["optimizer"]["state"].values(), strict=True):
            assert all(torch.equal(v, s[k]) for k, v in f.items())


# ------------------------------------------------------------------ 5. report what it can
def test_report_lists_unfinished_and_empty_runs_and_draws_the_rest(tmp_path, capsys):
    data = _mat(tmp_path / "CDR_Data.mat")
    out = tmp_path / "out"
    assert _main(capsys, _args(out, data, "gnvpro,adam", "--seeds", "0,1"))[0] == 0
    (out / "adam" / "seed-1" / "history.jsonl").write_text("")  # an empty history
    h = out / "gnvpro" / "seed-1" / "history.jsonl"  # an all-NaN one
    h.write_text("".join(json.dumps({**json.loads(r), "loss": math.nan}) + "\n"
                         for r in h.read_text().splitlines()))
    running = out / "gnvpro" / "seed-2"  # a run in progress (another process)
    running.mkdir()
    (running / "history.jsonl").write_text((out / "gnvpro/seed-0/history.jsonl")
                                           .read_text().splitlines()[0] + "\n")
    rc, err = _main(capsys, ["report", str(out)])
    assert rc == 0, err
    md = (out / "report.md").read_text()
    assert "gnvpro seed-2: not finished (in progress or killed; 1 records" in md
    assert "adam seed-1: finished, but its history has no records" in md
    assert "gnvpro seed-1: finished, but its history has only non-finite losses" in md
    assert "| gnvpro | 2 |" in md and "| adam | 2 |" in md
    assert (out / "loss_vs_work.png").stat().st_size > 10_000
    # no run finished yet: one line naming the runs in progress
    (out / "summary.json").unlink()
    for f in out.glob("*/seed-*/final.json"):
        f.unlink()
    rc, err = _main(capsys, ["report", str(out)])
    _one_line(rc, err, r"no run has finished yet \(5 in progress or killed: adam/seed-0")


@pytest.mark.parametrize(("name", "settings", "pattern"), [
    ("gnvpro-stochastic", {"n_batches": 20, "epochs": 1}, r"n_batches 20 is more than the 12"),
    ("gnvpro-stochastic", {"n_batches": 2, "epochs": 1.5}, r"epochs must be a whole number"),
    ("gnvpro", {"max_work": 1e12}, r"max_work 1e\+12 \(>= 1e12 means no work budget\)"),
    ("gnvpro", {}, r"gnvpro has no budget"),
])
def test_train_refuses_settings_it_would_round_or_run_unbounded(name, settings, pattern):
    from gnvpro_experiments.problems.base import Split
    from gnvpro_experiments.train import train

    model, x, y, _ = _tiny()
    with pytest.raises(ValueError, match=pattern):
        train(name, model, Split(x, y, x[:4], y[:4], x[:4], y[:4]), settings)


def test_a_refused_pickle_does_not_advise_unpickling_it(tmp_path):
    from gnvpro.checkpoint import load_checkpoint

    model, _, _, opt = _tiny()
    torch.save({"model": KeepBest(model, False), "optimizer": {}}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"not a readable checkpoint \(it holds objects other "
                                         r"than tensors") as e:
        load_checkpoint(tmp_path / "evil.pt", model, opt)
    assert "weights_only" not in str(e.value) and len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize("n_batches, error, text", [
    (0, ValueError, ">= 1"), (6, ValueError, "exceeds the 5 samples"),
    (2.5, TypeError, "integer"), (float("nan"), TypeError, "integer"),
])
def test_fixed_batches_refuses_counts_it_would_clamp_or_round(n_batches, error, text):
    """fixed_batches never clamps n_batches to the sample count or rounds a fraction."""
    from gnvpro import fixed_batches

    x, y = torch.randn(5, 2), torch.randn(5, 1)
    with pytest.raises(error, match=text):
        fixed_batches(x, y, n_batches, 0)
    assert len(fixed_batches(x, y, 5, 0)) == 5
