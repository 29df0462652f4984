"""GNvpro vs full-batch Adam at equal wall time on small tabular regressions (issue 10, item 6).

Data (bundled with scikit-learn, no download; inputs and targets standardised):
- diabetes: load_diabetes, 442 × 10 → disease progression;
- cancer-texture: load_breast_cancer, 569 × 27 → "mean texture" (the three texture columns are
  dropped from the inputs).
Model: an in→16→16→1 tanh MLP (gnvpro_experiments.models.mlp), float64, full batch, least squares.
Each method gets T seconds of wall time from the same initial weights (per seed): GNvpro
(alpha_w = alpha_theta = 1e-10, the config VARIANTS[NAME]) steps until T has passed,
torch.optim.Adam(lr=1e-2) likewise. Both are warmed up first on a throw-away copy. The training
loss 1/(2n)‖model(x) − y‖² of both final models is evaluated by the same function.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/small_regression_vs_adam.py
        [--subproblem lanczos,tn] [--seeds 3] [--times 0.5,1,2]

--subproblem takes a comma-separated list of VARIANTS names: lanczos (the paper's trust region),
steihaug, tn (truncated GN, the default config). Needs scikit-learn (pip install -e .[bench]).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes

import gnvpro
from gnvpro_experiments.models import mlp


def datasets() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    d = load_diabetes()
    bc = load_breast_cancer()
    names = list(bc.feature_names)
    keep = [i for i, f in enumerate(names) if "texture" not in f]
    raw = {"diabetes": (d.data, d.target),
           "cancer-texture": (bc.data[:, keep], bc.data[:, names.index("mean texture")])}
    out = {}
    for name, (x, y) in raw.items():
        x = (x - x.mean(0)) / x.std(0)
        y = (y - y.mean()) / y.std()
        out[name] = (torch.tensor(x, dtype=torch.float64),
                     torch.tensor(np.asarray(y)[:, None], dtype=torch.float64))
    return out


def train_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(0.5 / len(x) * (model(x) - y).square().sum())


VARIANTS = {"lanczos": gnvpro.GNvproConfig.trust_region(),
            "steihaug": gnvpro.GNvproConfig.trust_region(descent=gnvpro.Steihaug()),
            "tn": gnvpro.GNvproConfig.truncated_gauss_newton()}


def run_gnvpro(model, x, y, seconds: float, subproblem: str | None) -> int:
    cfg = VARIANTS["tn" if subproblem is None else subproblem]
    opt = gnvpro.GNvpro(model, loss="least_squares", alpha_w=1e-10, alpha_theta=1e-10,
                        config=cfg)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        opt.step(x, y)
        steps += 1
    return steps


def run_adam(model, x, y, seconds: float) -> int:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        opt.zero_grad()
        (0.5 / len(x) * (model(x) - y).square().sum()).backward()
        opt.step()
        steps += 1
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subproblem", default=None,
                    help="comma-separated names of VARIANTS (default: the default config)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--times", default="0.5,1,2", help="comma-separated budgets T in seconds")
    args = ap.parse_args()
    times = [float(t) for t in args.times.split(",")]
    variants = [None] if args.subproblem is None else args.subproblem.split(",")
    default = "tn"
    methods = {f"gnvpro[{v or default + ', default'}]":
               (lambda m, x, y, T, v=v: run_gnvpro(m, x, y, T, v)) for v in variants}
    methods["adam lr=1e-2"] = run_adam
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s), "
          f"seeds 0-{args.seeds - 1}; loss = 1/(2n)‖model(x) − y‖² on the training set")
    print(f"{'data':15s} {'n×d':>7s} {'T s':>5s}  {'method':24s} {'median':>10s} "
          f"{'mean ± std':>22s} {'steps':>7s}")
    for name, (x, y) in datasets().items():
        init = [mlp(x.shape[1], [16, 16], 1, generator=torch.Generator().manual_seed(s))
                for s in range(args.seeds)]
        for fn in methods.values():  # warm-up (torch.func's first call, allocator, …)
            fn(copy.deepcopy(init[0]), x, y, 0.3)
        for T in times:
            for mname, fn in methods.items():
                losses, steps = [], []
                for m0 in init:
                    m = copy.deepcopy(m0)
                    steps.append(fn(m, x, y, T))
                    losses.append(train_loss(m, x, y))
                sd = statistics.stdev(losses) if len(losses) > 1 else 0.0
                print(f"{name:15s} {f'{len(x)}×{x.shape[1]}':>7s} {T:5.2g}  {mname:24s} "
                      f"{statistics.median(losses):10.3e} "
                      f"{f'{statistics.mean(losses):.3e} ± {sd:.1e}':>22s} "
                      f"{statistics.median(steps):7.0f}", flush=True)


if __name__ == "__main__":
    main()
