"""The ``gnvpro`` command line.

    gnvpro demo [--out DIR] [--threads N]
    gnvpro run EXPERIMENT [--methods gnvpro,gn,lbfgs-vpro,adam] [--seeds 0-5 | 0,2,4 | ref]
               [--out DIR] [--data PATH] [--device cpu|cuda] [--budget-scale F] [--levels N]
               [--subset N] [--epochs E] [--max-seconds S] [--threads N] [--jvp-mode MODE]
               [--no-progress] [--resume] [--dist-timeout SECONDS]
    torchrun --standalone --nproc_per_node=N --no-python gnvpro run EXPERIMENT ...
    gnvpro report DIR
    gnvpro data dcr --n N --seed S --out PATH

User errors (a missing data file, an unknown experiment or method, a setting out of range, a
full disk, a corrupt checkpoint, ...) print one line to stderr and exit with code 2; an internal
error (a bug) prints its traceback and a line that says so, exit code 1. SIGINT and SIGTERM stop
``gnvpro run`` after the current step with a checkpoint and a line that says how to resume.

Under torchrun ``gnvpro run`` is data-parallel (gnvpro_experiments.launch): every process trains
on its shard of the training rows, rank 0 alone writes and prints, and a process's error line
names its rank.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import linecache
import os
import re
import shlex
import signal
import sys
import traceback
import typing
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit code 2, like every other user error)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="gnvpro",
        description="GNvpro (Gauss-Newton variable projection): demo, experiments and reports.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    d = sub.add_parser("demo", help="a quick demonstration (table + figure)")
    d.add_argument("--out", default="gnvpro-demo", help="output directory (default gnvpro-demo)")
    d.add_argument("--threads", type=int, help="torch intra-op threads (default 1)")

    r = sub.add_parser("run", help="run an experiment of the paper (cdr, dcr, ellipse, "
                       "indian-pines, cifar10, fashion-mnist or a .toml)")
    r.add_argument("experiment", help="cdr, dcr, ellipse, indian-pines, cifar10, fashion-mnist, "
                   "or the path of a config .toml")
    r.add_argument("--methods", help="comma-separated, e.g. gnvpro,gn,lbfgs-vpro,adam "
                   "(default: the experiment's)")
    r.add_argument("--seeds", help="e.g. 0-5, 0,2,4, ref (CDR reference split and θ0), ref,0-2")
    r.add_argument("--out", help="output directory (default runs/EXPERIMENT)")
    r.add_argument("--data", help="data file (CDR: CDR_Data.mat; DCR: a .npz from `gnvpro data`; "
                   "Indian Pines: indian_pines.npz; CIFAR-10: cifar10.npz or a "
                   "cifar-10-batches-py directory; Fashion-MNIST: the IDX directory)")
    r.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    r.add_argument("--budget-scale", type=float, default=1.0,
                   help="multiply every work/iteration budget (default 1)")
    r.add_argument("--levels", type=int, help="number of multilevel levels (default: config)")
    r.add_argument("--subset", type=int, help="image data sets: keep N training images "
                   "(and proportionally fewer validation/test images)")
    r.add_argument("--epochs", type=int, help="epochs of the stochastic methods "
                   "(the sub-batch methods *-stochastic, SGD, ADAM)")
    r.add_argument("--jvp-mode", choices=["auto", "double-backward", "jvp", "linearize"],
                   help="J_Z products of the Gauss-Newton methods (default auto: linearize for "
                   "convolutional networks, double-backward otherwise; gnvpro.autodiff)")
    r.add_argument("--max-seconds", type=float, help="give every run this many seconds of "
                   "training (equal shares per level) instead of its work budget")
    r.add_argument("--threads", type=int, help="torch intra-op threads (default: the "
                   "experiment's, 1 for the small networks, where more threads only add overhead "
                   "and oversubscribe a shared machine; 2 for DCR's 882-output head)")
    r.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="set any setting of a method's [methods.METHOD] table, e.g. "
                   "gnvpro.descent.max_products=30, gnvpro.jacobian=kaufman, "
                   "gnvpro.search.rule.eta_expand=0.8, adam.lr=1e-2 (a TOML value; repeatable; "
                   "a new kind of descent or search: gnvpro.descent.kind=cg "
                   "gnvpro.search.kind=strong_wolfe)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--resume", action="store_true", help="continue killed runs in --out from "
                   "their last checkpoint (finished runs are always kept)")
    r.add_argument("--checkpoint-every", type=float, default=300.0, metavar="SECONDS",
                   help="inside a level, checkpoint a run at most this often (default 300; "
                   "level ends are always checkpointed)")
    r.add_argument("--dist-timeout", type=_timeout, default=600.0, metavar="SECONDS",
                   help="under torchrun: how long a process waits for the others in a "
                   "collective before it fails (default 600); a process that fails or stops "
                   "makes the others fail within this time")

    rep = sub.add_parser("report", help="tables and figures of a run directory")
    rep.add_argument("dir", help="the --out directory of `gnvpro run`")

    da = sub.add_parser("data", help="generate data sets")
    dsub = da.add_subparsers(dest="dataset", metavar="DATASET")
    dsub.required = True
    dc = dsub.add_parser("dcr", help="generate the DCR surrogate data set (.npz)")
    dc.add_argument("--n", type=int, default=10000, help="number of samples (default 10000)")
    dc.add_argument("--seed", type=int, default=0, help="prior seed (default 0)")
    dc.add_argument("--out", required=True, help="output .npz path")
    dc.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    return p


def _timeout(text: str) -> float:
    """--dist-timeout: a number of seconds (argparse names the option when it is refused)."""
    from .launch import check_timeout

    try:
        return check_timeout(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0 (at most a week), "
                                         f"got {text!r}") from None


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        from .demo import run_demo
    except ImportError as e:
        raise _Usage(f"the demo is not available in this installation ({e})") from None
    _set_threads(args.threads)
    run_demo(Path(args.out), progress=True, threads=None)  # threads: set just above
    return 0


def _set_threads(n: int | None) -> None:
    """torch intra-op threads: n, or 1 by default (gnvpro.threads explains why)."""
    import torch

    if n is not None and not 1 <= n <= MAX_THREADS:
        raise _Usage(f"--threads must be in [1, {MAX_THREADS}], got {n}")
    torch.set_num_threads(1 if n is None else n)


MAX_THREADS = 1024
MAX_DCR_SAMPLES = 10**7


def _check_numbers(args: argparse.Namespace) -> None:
    """Range checks of run's numeric options that no later layer makes (never clamped; the
    config checks --levels, --subset and --epochs >= 1, the runner the budgets and memory)."""
    if args.levels is not None and args.levels > 64:
        raise _Usage(f"--levels {args.levels}: every level doubles the network; use at most "
                     "64 (a few in practice)")


def _cmd_run(args: argparse.Namespace) -> int:
    from .launch import process_group

    _check_numbers(args)
    with process_group(args.device, args.dist_timeout):  # torchrun: join its process group
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """gnvpro run, in one process or on every rank under torchrun (rank 0 prints)."""
    from .config import load_config
    from .launch import current
    from .report import summary_table
    from .runner import run_experiment
    from .selection import parse_methods, parse_seeds
    from .store import resumable

    ranks = current()
    cfg = load_config(args.experiment).with_levels(args.levels).with_epochs(args.epochs)
    cfg = cfg.with_data(subset=args.subset).with_jvp_mode(args.jvp_mode)
    cfg = cfg.with_max_seconds(args.max_seconds).with_settings(args.set)
    _set_threads(args.threads if args.threads is not None else cfg.threads)
    methods = parse_methods(args.methods, cfg)
    seeds = parse_seeds(args.seeds, cfg)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    if args.resume and not ranks.decide(lambda: resumable(out.expanduser())):
        raise _Usage(f"--resume: {out} holds no runs to resume; run without --resume to start "
                     "them")
    summary = run_experiment(cfg, out, methods, seeds, data_path=args.data, device=args.device,
                             budget_scale=args.budget_scale, progress=not args.no_progress,
                             resume=args.resume, checkpoint_every=args.checkpoint_every)
    if not ranks.writer:
        return 0
    print(summary_table(summary))
    print(f"\nresults in {out}  (tables and figures: gnvpro report {out})")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import report

    print(report(args.dir))
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from .problems.dcr import generate_dcr, save_dcr

    if args.n < 1:
        raise _Usage(f"--n must be >= 1, got {args.n}")
    if args.n > MAX_DCR_SAMPLES:
        raise _Usage(f"--n must be <= {MAX_DCR_SAMPLES}, got {args.n}")
    if args.seed < 0:
        raise _Usage(f"--seed must be >= 0, got {args.seed}")
    if args.workers < 1:
        raise _Usage(f"--workers must be >= 1, got {args.workers}")
    if Path(args.out).is_dir():
        raise _Usage(f"--out {args.out} is a directory; give the path of the .npz file to write")
    path = save_dcr(args.out, generate_dcr(args.n, args.seed, progress=True,
                                           workers=args.workers))
    print(f"wrote {path}")
    return 0


_OWN = tuple(os.path.dirname(os.path.abspath(m)) for m in (__file__,))


def _packages() -> tuple[str, ...]:
    """The source directories of gnvpro and gnvpro_experiments."""
    import gnvpro

    return (os.path.dirname(os.path.abspath(gnvpro.__file__)), *_OWN)


def _raised_on_purpose(e: BaseException) -> bool:
    """Whether ``e`` was raised by a ``raise`` statement of gnvpro or gnvpro_experiments (their
    argument checks: a user error), not by Python or another library in the middle of a
    computation (a bug)."""
    tb = e.__traceback__
    if tb is None:
        return False
    last = traceback.extract_tb(tb)[-1]
    fname = os.path.abspath(last.filename)
    if not any(fname.startswith(d + os.sep) for d in _packages()):
        return False
    line = last.line or linecache.getline(last.filename, last.lineno or 0)
    return line.lstrip().startswith("raise ")


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def user_error(e: BaseException) -> str | None:
    """The one-line message of a user error, or None for an internal error (a bug)."""
    from .config import ExperimentError

    if isinstance(e, ExperimentError | _Usage):
        return _one_line(e)
    if isinstance(e, OSError):
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return (f"no space left on the device{where}: free some space or choose another "
                    "--out (the files written so far are intact)")
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"permission denied{where}: {e.strerror or e}"
        return _one_line(e)
    if isinstance(e, ValueError | TypeError | IndexError | KeyError) and _raised_on_purpose(e):
        return _one_line(e)
    if _collective_failed(e):
        text = re.sub(r"^\[[^\]]*\]\s*", "", _one_line(e))  # gloo's [file:line] prefix
        return (f"a collective with the other processes failed ({text[:160]}): another process "
                "failed or stopped (see its message), or none answered within --dist-timeout")
    text = str(e).lower()
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and (
            "out of memory" in text or "can't allocate memory" in text)):
        return (f"out of memory ({_one_line(e)[:120]}): use a smaller problem (--subset, "
                "--levels, batch_size) or a machine with more memory")
    return None


def _collective_failed(e: BaseException) -> bool:
    """Whether ``e`` is torch.distributed's: a collective of a data-parallel run that failed
    (a peer process ended, or the timeout passed)."""
    tb = e.__traceback__
    if not isinstance(e, RuntimeError) or tb is None:
        return False
    where = os.path.abspath(traceback.extract_tb(tb)[-1].filename)
    return f"{os.sep}torch{os.sep}distributed{os.sep}" in where


def _resume_command(argv: Sequence[str]) -> str:
    args = list(argv)
    cmd = shlex.join(["gnvpro", *args, *([] if "--resume" in args else ["--resume"])])
    return f"torchrun <the same options> --no-python {cmd}" if _world() > 1 else cmd


def _world() -> int:
    """The processes torchrun started (1 without torchrun)."""
    from .launch import world_size

    try:
        return world_size()
    except ValueError:
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gnvpro`` console script; returns the exit code."""
    from .extra import missing, missing_message
    from .stop import Interrupted, handle_signals

    argv = sys.argv[1:] if argv is None else list(argv)
    if absent := missing():
        print(f"gnvpro: error: {missing_message(absent)}", file=sys.stderr)
        return 2
    args = _parser().parse_args(argv)
    handler = {"demo": _cmd_demo, "run": _cmd_run, "report": _cmd_report, "data": _cmd_data}
    cmd = f"gnvpro {args.command}"
    quiet = False  # under torchrun rank 0 alone says how to resume; every rank names its errors
    if args.command == "run" and _world() > 1:
        from .launch import rank_tag

        cmd, quiet = cmd + rank_tag(), os.environ.get("RANK", "0") != "0"
    try:
        with handle_signals() if args.command == "run" else contextlib.nullcontext():
            return handler[args.command](args)
    except Interrupted as e:
        if quiet:
            return 128 + e.signum
        print(f"{cmd}: stopped by {signal.Signals(e.signum).name}; unfinished runs are "
              f"checkpointed: continue them with `{_resume_command(argv)}`", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        if quiet:
            return 130
        again = (f": continue from the last checkpoint with `{_resume_command(argv)}`"
                 if args.command == "run" else "")
        print(f"{cmd}: interrupted{again}", file=sys.stderr)
        return 130
    except Exception as e:
        msg = user_error(e)
        if msg is None:
            traceback.print_exc()
            print(f"{cmd}: internal error (a bug in gnvpro, not in your input; please report "
                  f"it with the traceback above): {type(e).__name__}: {_one_line(e)}",
                  file=sys.stderr)
            return 1
        print(f"{cmd}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
