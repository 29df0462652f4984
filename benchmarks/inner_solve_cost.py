"""Cost of the inner Newton solve W*(θ) inside GNvpro's default (truncated Gauss-Newton) step.

Two classification problems on scikit-learn's 8×8 digits (1400 training samples, a tanh MLP
64-32-32-c, α_W = α_θ = ALPHA): cross-entropy over the 10 classes (c = 10, the dense H_W is
330 × 330) and logistic even/odd (c = 1). For each problem and each inner solver, GNvpro's
default runs WARM outer iterations (with the base solver), then STEPS outer iterations are timed
from those weights with each solver (a fresh optimiser each time), REPEATS times, the solvers
interleaved; the table reports medians over the repeats:

- ``outer ms``: one outer iteration (CG on H_GN + the Wolfe line search);
- ``inner ms``: time inside the inner solves plus the H_W⁻¹ applications (both the W*-side
  work of an iteration), and ``share`` = inner ms / outer ms;
- ``ms/solve``, ``newton/solve``: per inner solve (line-search trial points and the start);
- ``H formed/solve``: dense Hessians formed per inner solve (including the one behind H_W⁻¹);
- ``H_W prod/solve``: products with the matrix-free H_W per inner solve (the Newton iteration's
  CG preconditioned by a reused factor).

Inner solvers: ``head`` is the library as installed; ``base`` is ``solve_newton`` of the git
revision --baseline (loaded from ``git show REV:src/gnvpro/inner/newton.py`` into this process
and patched in), so before/after are measured in one process on the same machine load; it runs
on the installed losses (their faster softmax, which also speeds the outer products, is in both).
One torch thread (torch.set_num_threads(1)); the ratios, not the seconds, carry across machines.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/inner_solve_cost.py [--baseline dda3b6f]
        [--alpha 1e-4] [--steps 10] [--repeats 3] [--warm 10] [--json PATH]
        [--descent cg|lbfgs] [--forcing KAPPA]

--problem synth20: benchmarks/peers.py's 20-class problem (seed 0, α = 1e-4) instead of the
digits (cross-entropy only). --descent lbfgs: GNvpro with an L-BFGS direction (no H_W⁻¹
applied); --forcing: its inner_forcing.
Measured with --baseline c801218 --descent lbfgs --repeats 5 --steps 20
(the factor the Newton iteration kept preconditions the next solve): cross-entropy 20.7 →
16.5 ms per iteration, 0.87 → 0.17 Hessians formed per solve; with --forcing 1e-3 15.2 →
11.4 ms, 0.91 → 0.05 (docs/results.md).

Needs scikit-learn (``pip install -e .[bench]``).

Measured (shared 2-core machine, one torch thread, --repeats 7, base = dda3b6f), cross-entropy
(c = 10, p = 33): α = 1e-4: 40.9 → 11.4 ms per solve (0.28×), 4.30 → 4.10 Newton iterations and
5.30 → 0.60 Hessians formed per solve, inner share of an outer iteration 71 % → 43 %, outer
iteration 115 → 53 ms (0.46×); α = 1e-8: 55.1 → 18.3 ms per solve (0.33×), 6.05 → 4.79 Newton
iterations, share 76 % → 54 %, outer 138 → 64 ms. Logistic (c = 1, p = 33: below the reuse
threshold, H_W still formed at each iteration): unchanged, 16 % / 23 % share. The code at
dda3b6f measured alone (its own losses, before this benchmark's baseline loader existed):
cross-entropy α = 1e-4 47 ms per solve, 70 % share, 134 ms per outer iteration.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import gnvpro
import gnvpro.inner
from gnvpro.inner import newton as newton_mod

ROOT = Path(__file__).resolve().parents[1]


def load_baseline(rev: str) -> Callable:
    """solve_newton of git revision `rev`, compiled into a fresh module of this process."""
    src = subprocess.run(["git", "show", f"{rev}:src/gnvpro/inner/newton.py"], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout
    mod = types.ModuleType(f"newton_{rev}")
    mod.__dict__["__name__"] = mod.__name__
    sys.modules[mod.__name__] = mod
    exec(compile(src, f"{rev}:newton.py", "exec"), mod.__dict__)  # noqa: S102 - our own history
    return mod.solve_newton


def digits(loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """1400 standardised 8×8 digit images and their labels (10 classes, or even/odd)."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    x = torch.tensor(X[:1400], dtype=torch.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1.0)
    y = torch.tensor(y[:1400], dtype=torch.int64)
    return (x, y) if loss == "cross_entropy" else (x, (y % 2).to(torch.float64))


def model_for(c: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                         nn.Linear(32, c)).double()


class Meter:
    """Counts time in the inner solves and in H_W⁻¹, solves, Newton iterations, Hessians."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.inner_s = 0.0
        self.solves = 0
        self.newton = 0
        self.hessians = 0
        self.products = 0

    def wrap_solver(self, solver: Callable, factor0: bool) -> Callable:
        def timed(*args, **kwargs):
            if not factor0:  # the baseline has no factor0
                kwargs.pop("factor0", None)
            t = time.perf_counter()
            sol = solver(*args, **kwargs)
            self.inner_s += time.perf_counter() - t
            self.solves += 1
            self.newton += sol.iterations
            sol.hess_inv = self.wrap_hess_inv(sol.hess_inv)
            return sol

        return timed

    def wrap_hess_inv(self, fn: Callable) -> Callable:
        def timed(V):
            t = time.perf_counter()
            out = fn(V)
            self.inner_s += time.perf_counter() - t
            return out

        return timed

    def count_hessians(self, fn: Callable) -> Callable:
        def counted(*args, **kwargs):
            self.hessians += 1
            return fn(*args, **kwargs)

        return counted

    def count_products(self, operator: Callable) -> Callable:
        """hessian_operator whose products with H_W are counted (the Newton iteration's PCG)."""
        def counted_operator(*args, **kwargs):
            apply = operator(*args, **kwargs)

            def counted(V):
                self.products += 1
                return apply(V)

            return counted

        return counted_operator


def timed_steps(loss: str, model: nn.Module, x, y, meter: Meter, args) -> tuple:
    """STEPS outer iterations of a fresh GNvpro from the model's weights: (outer s, inner s,
    s per solve, Newton iterations per solve, Hessians per solve, Φ after, H_W products per
    solve)."""
    opt = gnvpro.GNvpro(model, loss=loss, alpha_w=args.alpha, alpha_theta=args.alpha,
                        config=config(args))
    opt.set_batch(x, y)
    meter.reset()
    t = time.perf_counter()
    for _ in range(args.steps):
        opt.step(x, y)
    total = time.perf_counter() - t
    k = max(meter.solves, 1)
    return (total / args.steps, meter.inner_s / args.steps, meter.inner_s / k,
            meter.newton / k, meter.hessians / k, opt.current().value, meter.products / k)


def config(args: argparse.Namespace) -> gnvpro.GNvproConfig:
    """The default (truncated GN), or --descent lbfgs (an L-BFGS direction: no H_W⁻¹), with
    --forcing κ (inexact inner solves)."""
    descent = gnvpro.LBFGSTwoLoop() if args.descent == "lbfgs" else gnvpro.PreconditionedCG()
    return gnvpro.GNvproConfig(descent=descent, inner_forcing=args.forcing)


def run(loss: str, solvers: dict, meter: Meter, args: argparse.Namespace) -> dict[str, dict]:
    """Warm-up (the first solver), then the solvers' repeats interleaved from the same weights
    (a change of machine load hits them alike); medians over the repeats."""
    if args.problem == "synth20":  # benchmarks/peers.py's 20-class problem, seed 0
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import peers

        p = peers.make_problem("synth20", 0)
        x, y, model = p.x, p.y, p.model
    else:
        x, y = digits(loss)
        model = model_for(10 if loss == "cross_entropy" else 1)
    wrapped = {name: meter.wrap_solver(fn, "factor0" in inspect.signature(fn).parameters)
               for name, fn in solvers.items()}
    gnvpro.inner.solve_newton = next(iter(wrapped.values()))
    warm = gnvpro.GNvpro(model, loss=loss, alpha_w=args.alpha, alpha_theta=args.alpha,
                         config=config(args))
    for _ in range(args.warm):
        warm.step(x, y)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    runs: dict[str, list] = {name: [] for name in solvers}
    for _ in range(args.repeats):
        for name, fn in wrapped.items():
            gnvpro.inner.solve_newton = fn
            model.load_state_dict(start)
            runs[name].append(timed_steps(loss, model, x, y, meter, args))
    return {name: summary(rs) for name, rs in runs.items()}


def summary(rs: list[tuple]) -> dict:
    """Medians over the repeats (times in ms); counts and Φ of the last repeat."""
    med = statistics.median
    return {"outer_ms": 1e3 * med(r[0] for r in rs), "inner_ms": 1e3 * med(r[1] for r in rs),
            "share": med(r[1] / r[0] for r in rs), "ms_per_solve": 1e3 * med(r[2] for r in rs),
            "newton_per_solve": rs[-1][3], "hessians_per_solve": rs[-1][4],
            "phi_after": rs[-1][5], "products_per_solve": rs[-1][6]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", default="dda3b6f", help="git revision of the 'base' solver")
    ap.add_argument("--alpha", type=float, default=1e-4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warm", type=int, default=10)
    ap.add_argument("--json", default=None)
    ap.add_argument("--descent", choices=("cg", "lbfgs"), default="cg")
    ap.add_argument("--forcing", type=float, default=0.0, help="GNvproConfig.inner_forcing")
    ap.add_argument("--problem", choices=("digits", "synth20"), default="digits",
                    help="synth20: peers.py's 20-class problem (cross-entropy only)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    solvers = {"base": load_baseline(args.baseline), "head": newton_mod.solve_newton}
    meter = Meter()
    dense = newton_mod.dense_hessian
    newton_mod.dense_hessian = meter.count_hessians(dense)  # the head's formations
    base_mod = sys.modules[f"newton_{args.baseline}"]
    base_mod.dense_hessian = meter.count_hessians(base_mod.dense_hessian)
    for mod in (newton_mod, base_mod):
        mod.hessian_operator = meter.count_products(mod.hessian_operator)
    rows = []
    print(f"torch threads: {torch.get_num_threads()}, alpha = {args.alpha:g}, "
          f"{args.steps} outer iterations × {args.repeats} repeats after {args.warm} warm-up, "
          f"descent {args.descent}, inner_forcing {args.forcing:g}")
    print(f"{'loss':14s} {'solver':6s} {'outer ms':>9s} {'inner ms':>9s} {'share':>6s} "
          f"{'ms/solve':>9s} {'newton/solve':>12s} {'H formed/solve':>14s} {'H_W prod/solve':>14s} "
          f"{'Φ after':>12s}")
    for loss in ("cross_entropy",) if args.problem == "synth20" else ("cross_entropy", "logistic"):
        for name, r in run(loss, solvers, meter, args).items():
            rows.append(r | {"loss": loss, "solver": name})
            print(f"{loss:14s} {name:6s} {r['outer_ms']:9.1f} {r['inner_ms']:9.1f} "
                  f"{r['share']:6.0%} {r['ms_per_solve']:9.2f} {r['newton_per_solve']:12.2f} "
                  f"{r['hessians_per_solve']:14.2f} {r['products_per_solve']:14.2f} "
                  f"{r['phi_after']:12.6e}", flush=True)
        base, head = rows[-2], rows[-1]
        print(f"{loss:14s} head/base: outer {head['outer_ms'] / base['outer_ms']:.2f}, "
              f"per solve {head['ms_per_solve'] / base['ms_per_solve']:.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
