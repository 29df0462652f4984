"""``gnvpro run`` under torchrun (gnvpro_experiments.launch): 2 gloo processes give the one-process
results (test error within 1e-6 relative, the same work units) and rank 0 alone writes the files a
one-process run writes, ADAM and SGD included; a bad --dist-timeout is a one-line error; a
seconds budget stops every rank after the same step; rank 0's decisions reach every rank, its
errors included; the timeout bounds a wait for a rank that never comes; a killed rank ends the
job with whole files that --resume continues. Measured (CDR seed 0, 2 levels, --budget-scale
0.3): test error 3e-11 (gnvpro), 7e-13 (gn), 5e-8 (lbfgs-vpro) relative to one process,
identical work units."""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gnvpro_experiments import cli, launch, load_config
from gnvpro_experiments.problems.cdr import default_cdr_path
from gnvpro_experiments.runner import _check_data_parallel

BIN = Path(sys.executable).parent
TORCHRUN, GNVPRO = BIN / "torchrun", BIN / "gnvpro"
HAVE_GLOO = dist.is_available() and dist.is_gloo_available()
needs_torchrun = pytest.mark.skipif(not (HAVE_GLOO and TORCHRUN.exists() and GNVPRO.exists()),
                                    reason="torchrun, the gnvpro script or gloo not available")
needs_cdr = pytest.mark.skipif(not default_cdr_path().is_file(), reason="CDR_Data.mat not found")
METHODS = ["gnvpro", "gn", "lbfgs-vpro"]
RUN = ["run", "cdr", "--methods", ",".join(METHODS), "--seeds", "0", "--levels", "2",
       "--budget-scale", "0.3", "--no-progress"]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if default_cdr_path().is_file():
        env["GNVPRO_DATA"] = str(default_cdr_path().parent)
    return env


def _gnvpro(nproc: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """`gnvpro ARGS` in one process (nproc 0) or under torchrun with nproc processes."""
    cmd = [str(GNVPRO), *args] if nproc == 0 else [
        str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", "--no-python", str(GNVPRO),
        *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())


def _files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


@needs_torchrun
@needs_cdr
def test_two_processes_give_the_one_process_results_and_rank_0_alone_writes(tmp_path):
    one = _gnvpro(0, *RUN, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    two = _gnvpro(2, *RUN, "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("results in") == 1  # rank 0 alone prints
    a, b = (json.loads((tmp_path / d / "summary.json").read_text())["methods"]
            for d in ("one", "two"))
    for m in METHODS:
        (r1,), (r2,) = a[m], b[m]
        assert r2["work_units"] == r1["work_units"], m
        for part in ("test", "val", "train"):  # train: the whole training set's, not a shard's
            assert r2[part] == pytest.approx(r1[part], rel=1e-6), (m, part)
        h1, h2 = ([json.loads(line) for line in (tmp_path / d / m / "seed-0" /
                                                 "history.jsonl").read_text().splitlines()]
                  for d in ("one", "two"))
        assert [r["work_units"] for r in h2] == [r["work_units"] for r in h1], m
        assert [r["metrics"]["train"]["rel_err"] for r in h2] == pytest.approx(
            [r["metrics"]["train"]["rel_err"] for r in h1], rel=1e-6), m
        info = json.loads((tmp_path / "two" / m / "seed-0" / "config.json").read_text())
        assert info["processes"] == 2
    assert _files(tmp_path / "two") == _files(tmp_path / "one")


@needs_torchrun
@needs_cdr
def test_adam_and_sgd_under_torchrun_give_the_one_process_results(tmp_path):
    """ADAM / SGD under DistributedDataParallel with one shuffle of all rows: the one-process
    epochs (best-validation iterate included), rank 0 alone writing."""
    run = ["run", "cdr", "--methods", "adam,sgd", "--seeds", "0", "--levels", "1",
           "--budget-scale", "0.2", "--no-progress"]
    one = _gnvpro(0, *run, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    two = _gnvpro(2, *run, "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = (json.loads((tmp_path / d / "summary.json").read_text())["methods"]
            for d in ("one", "two"))
    for m in ("adam", "sgd"):
        (r1,), (r2,) = a[m], b[m]
        assert r2["work_units"] == r1["work_units"], m
        for part in ("test", "val", "train"):
            assert r2[part] == pytest.approx(r1[part], rel=1e-6), (m, part)
    assert _files(tmp_path / "two") == _files(tmp_path / "one")


def test_a_bad_dist_timeout_is_a_one_line_cli_error(capsys):
    for bad in ("0", "-5", "nan", "inf", "abc", "1e9"):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["run", "cdr", "--dist-timeout", bad])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1, err
        assert "--dist-timeout" in err and repr(bad) in err and "seconds" in err
    r = _gnvpro(0, "run", "cdr", "--dist-timeout", "-1", timeout=60)  # the installed command
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr and "--dist-timeout" in r.stderr


@needs_torchrun
def test_a_bad_dist_timeout_under_torchrun_names_the_option_on_every_rank():
    r = _gnvpro(2, "run", "cdr", "--dist-timeout", "-1", timeout=120)
    assert r.returncode != 0
    lines = [s for s in r.stderr.splitlines() if "--dist-timeout" in s]
    # each rank says it, unless torchrun stopped it first (the other's exit code ends the job)
    assert 1 <= len(lines) <= 2 and all("seconds" in s for s in lines), r.stderr[-2000:]
    assert "gnvpro_experiments" not in r.stderr


def test_methods_that_do_not_shard_by_rows_are_refused():
    cfg = load_config("cdr")
    with pytest.raises(ValueError, match="gnvpro-stochastic does not run under torchrun"):
        _check_data_parallel(load_config("cifar10"), ["gnvpro-stochastic"], 1.0)
    _check_data_parallel(cfg, ["gnvpro", "gnvpro-tn", "gn", "lbfgs-vpro", "adam", "sgd"], 1.0)
    _check_data_parallel(cfg.with_max_seconds(60.0), ["gnvpro"], 1.0)  # fit stops them alike


@needs_torchrun
@needs_cdr
def test_a_seconds_budget_stops_every_process_after_the_same_step(tmp_path):
    r = _gnvpro(2, "run", "cdr", "--methods", "gnvpro", "--seeds", "0", "--levels", "1",
                "--max-seconds", "1.5", "--out", str(tmp_path / "out"), "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    final = json.loads((tmp_path / "out" / "gnvpro" / "seed-0" / "final.json").read_text())
    assert final["work_units"] > 2


def test_one_process_is_the_identity():
    ranks = launch.current()
    assert ranks is launch.ONE and ranks.writer and not ranks.parallel
    t = torch.arange(6.0).reshape(3, 2)
    assert ranks.shard(t) is t and ranks.reducer(3) == {}
    assert ranks.decide(lambda: 7) == 7
    with launch.process_group("cpu", 5.0) as r:  # no torchrun: nothing is joined
        assert r is launch.ONE and not dist.is_initialized()


# -------------------------------------------------------------- ranks in spawned gloo processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_rank(rank: int, world: int, port: int, timeout: float, work, out: str) -> None:
    """work(ranks, out) inside launch.process_group, with the variables torchrun would set."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    with launch.process_group("cpu", timeout) as ranks:
        t0 = time.perf_counter()
        try:
            result = work(ranks)
        except Exception as e:
            result = {"error": type(e).__name__, "message": str(e), "user": cli.user_error(e),
                      "seconds": time.perf_counter() - t0}
    torch.save(result, f"{out}/rank{rank}.pt")


def _spawn(tmp_path: Path, world: int, work, timeout: float = 30.0) -> list:
    mp.spawn(_as_rank, args=(world, _free_port(), timeout, work, str(tmp_path)), nprocs=world,
             join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]


def _shards_and_decisions(ranks: launch.Ranks) -> dict:
    x = torch.arange(14.0).reshape(7, 2)
    mine = ranks.shard(x)
    reducer = ranks.reducer(len(mine))["reducer"]
    return {"shard": mine, "gathered": reducer.rows(mine * 10), "n": reducer.n,
            "decided": ranks.decide(lambda: f"rank {ranks.rank} decided")}


def _rank_0_fails(ranks: launch.Ranks) -> None:
    def refuse() -> None:
        raise ValueError("the directory is not writable")

    ranks.decide(refuse)


def _rank_0_never_comes(ranks: launch.Ranks) -> None:
    if ranks.writer:
        time.sleep(5)  # never reaches the collective the other rank waits in
    else:
        ranks.decide(lambda: None)


@pytest.mark.skipif(not HAVE_GLOO, reason="torch.distributed with gloo is not available")
def test_shards_keep_the_row_order_and_rank_0_decides_for_all(tmp_path):
    got = _spawn(tmp_path, 3, _shards_and_decisions)
    x = torch.arange(14.0).reshape(7, 2)
    assert torch.equal(torch.cat([g["shard"] for g in got]), x)  # contiguous, in rank order
    assert [len(g["shard"]) for g in got] == [3, 2, 2]
    for g in got:
        assert torch.equal(g["gathered"], x * 10) and g["n"] == 7
        assert g["decided"] == "rank 0 decided"


@pytest.mark.skipif(not HAVE_GLOO, reason="torch.distributed with gloo is not available")
def test_an_error_of_rank_0_reaches_every_rank_with_its_message(tmp_path):
    r0, r1 = _spawn(tmp_path, 2, _rank_0_fails)
    assert r0["error"] == "ValueError" and r0["message"] == "the directory is not writable"
    assert r1["error"] == "PeerFailed"
    assert r1["user"] == "rank 0 failed: the directory is not writable"


@pytest.mark.skipif(not HAVE_GLOO, reason="torch.distributed with gloo is not available")
def test_the_timeout_bounds_the_wait_for_a_rank_that_never_comes(tmp_path):
    r0, r1 = _spawn(tmp_path, 2, _rank_0_never_comes, timeout=2.0)
    assert r1["error"] == "RuntimeError" and 1.5 < r1["seconds"] < 4.5, r1
    assert r1["user"] is not None and "--dist-timeout" in r1["user"]  # one line, not a bug


def _writes_under(root: Path) -> list:
    """Record every file this process opens for writing, creates, renames or removes under
    ``root`` (an audit hook: it sees every route, torch.save and flock files included)."""
    seen: list = []
    flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str | bytes | os.PathLike) and (
                (args[2] or 0) & flags or any(c in (args[1] or "") for c in "wax+")):
            paths = [args[0]]
        elif event in ("os.mkdir", "os.remove", "os.rename", "os.rmdir", "os.truncate"):
            paths = [a for a in args if isinstance(a, str | bytes | os.PathLike)]
        else:
            return
        for p in paths:
            if str(Path(os.fsdecode(p)).resolve()).startswith(str(root.resolve())):
                seen.append((event, os.fsdecode(p)))

    sys.addaudithook(hook)
    return seen


def _experiment(ranks: launch.Ranks, out: str) -> dict:
    """CDR (2 levels, mid-level checkpoints) into ``out`` twice; what this rank wrote there."""
    from gnvpro_experiments import run_experiment

    root = Path(out) / "runs"
    writes = _writes_under(root)
    cfg = load_config("cdr").with_levels(2)
    kw = {"methods": ["gnvpro", "lbfgs-vpro"], "seeds": [0], "budget_scale": 0.2,
          "progress": False, "checkpoint_every": 0.0}
    first = run_experiment(cfg, root, **kw)
    again = run_experiment(cfg, root, resume=True, **kw)  # finished: read, not rerun
    return {"first": first["methods"], "again": again["methods"], "writes": list(writes)}


@needs_cdr
@pytest.mark.skipif(not HAVE_GLOO, reason="torch.distributed with gloo is not available")
def test_ranks_other_than_0_write_nothing(tmp_path):
    r0, r1 = _spawn(tmp_path, 2, functools.partial(_experiment, out=str(tmp_path)))
    assert r1["writes"] == []
    assert {Path(p).name for _, p in r0["writes"]} >= {"checkpoint.pt", "final.json"}  # seen
    assert r0["first"] == r1["first"] == r0["again"] == r1["again"]
    assert all(len(rows) == 1 for rows in r0["first"].values())
    assert (tmp_path / "runs" / "gnvpro" / "seed-0" / "final.json").is_file()


def _child_of(parent: int, rank: int) -> int | None:
    """The PID of the worker process of torchrun ``parent`` whose RANK is ``rank``."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(d.name)
    return None


def _whole_files(out: Path) -> None:
    """Every file a run left is whole: JSON files parse, JSON-lines lines parse, checkpoints
    load."""
    for p in out.rglob("*"):
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".jsonl":
            for line in p.read_text().splitlines():
                json.loads(line)
        elif p.suffix == ".pt":
            torch.load(p, map_location="cpu", weights_only=False)


@needs_torchrun
@needs_cdr
def test_a_killed_rank_ends_the_run_with_a_message_and_leaves_whole_files(tmp_path):
    """SIGKILL to rank 1 in the middle of training: torchrun's run ends within the timeout with
    a non-zero status and a one-line message from rank 0, no file is half-written, and
    --resume finishes the run."""
    out = tmp_path / "out"
    args = ["run", "cdr", "--methods", "gnvpro", "--seeds", "0", "--levels", "1",
            "--set", "gnvpro.max_work=2000", "--checkpoint-every", "0", "--dist-timeout", "20",
            "--out", str(out), "--no-progress"]  # about 10 s of training on 2 processes
    proc = subprocess.Popen([str(TORCHRUN), "--standalone", "--nproc_per_node=2", "--no-python",
                             str(GNVPRO), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    ckpt = out / "gnvpro" / "seed-0" / "checkpoint.pt"  # written after every step
    deadline = time.time() + 90
    while time.time() < deadline and not ckpt.is_file():
        time.sleep(0.1)
    time.sleep(1.0)  # a few steps in
    victim = _child_of(proc.pid, 1)
    assert victim is not None and proc.poll() is None
    os.kill(victim, 9)
    t0 = time.time()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and time.time() - t0 < 30
    lines = [s for s in err.splitlines() if s.startswith("gnvpro run")]
    assert lines, err[-2000:]
    assert "gnvpro_experiments" not in err  # no traceback of ours (torchrun prints its own)
    _whole_files(out)
    again = _gnvpro(2, *args, "--resume")
    assert again.returncode == 0, [s for s in again.stderr.splitlines() if "gnvpro" in s]
    assert (out / "gnvpro" / "seed-0" / "final.json").is_file()
