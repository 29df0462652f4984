"""The ``gnvpro`` command line.

    gnvpro demo [--out DIR] [--threads N]
    gnvpro run EXPERIMENT [--methods gnvpro,gn,lbfgs-vpro,adam] [--seeds 0-5 | 0,2,4 | ref]
               [--out DIR] [--data PATH] [--device cpu|cuda] [--budget-scale F] [--levels N]
               [--subset N] [--epochs E] [--max-seconds S] [--threads N] [--jvp-mode MODE]
               [--no-progress] [--resume]
    gnvpro report DIR
    gnvpro data dcr --n N --seed S --out PATH

User errors (a missing data file, an unknown experiment or method, ...) print one line to stderr
and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
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
                   "gnvpro.max_krylov=30, gnvpro.jacobian=kaufman, "
                   "gnvpro.radius_rule.eta_expand=0.8, adam.lr=1e-2 (a TOML value; repeatable)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--resume", action="store_true", help="continue killed runs in --out from "
                   "their last checkpoint (finished runs are always kept)")
    r.add_argument("--checkpoint-every", type=float, default=300.0, metavar="SECONDS",
                   help="inside a level, checkpoint a run at most this often (default 300; "
                   "level ends are always checkpointed)")

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

    if n is not None and n < 1:
        raise _Usage(f"--threads must be >= 1, got {n}")
    torch.set_num_threads(1 if n is None else n)


def _cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .report import summary_table
    from .runner import run_experiment
    from .selection import parse_methods, parse_seeds

    cfg = load_config(args.experiment).with_levels(args.levels).with_epochs(args.epochs)
    cfg = cfg.with_data(subset=args.subset).with_jvp_mode(args.jvp_mode)
    cfg = cfg.with_max_seconds(args.max_seconds).with_settings(args.set)
    _set_threads(args.threads if args.threads is not None else cfg.threads)
    methods = parse_methods(args.methods, cfg)
    seeds = parse_seeds(args.seeds, cfg)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    summary = run_experiment(cfg, out, methods, seeds, data_path=args.data, device=args.device,
                             budget_scale=args.budget_scale, progress=not args.no_progress,
                             resume=args.resume, checkpoint_every=args.checkpoint_every)
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
    if args.seed < 0:
        raise _Usage(f"--seed must be >= 0, got {args.seed}")
    if Path(args.out).is_dir():
        raise _Usage(f"--out {args.out} is a directory; give the path of the .npz file to write")
    path = save_dcr(args.out, generate_dcr(args.n, args.seed, progress=True,
                                           workers=max(1, args.workers)))
    print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gnvpro`` console script; returns the exit code."""
    from .config import ExperimentError

    args = _parser().parse_args(None if argv is None else list(argv))
    handler = {"demo": _cmd_demo, "run": _cmd_run, "report": _cmd_report, "data": _cmd_data}
    try:
        return handler[args.command](args)
    except (ExperimentError, _Usage, OSError) as e:  # OSError: missing, unreadable, read-only
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"gnvpro {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gnvpro: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
