"""`gnvpro demo`: GNvpro (its default truncated Gauss-Newton, and the paper's trust region)
against ADAM on an embedded parametric PDE (no files needed).

The problem: the 1-D heat equation u_t = κ u_xx on (0, 1) with u(0) = u(1) = 0 and initial
state u(x, 0) = Σ_k a_k sin(kπx), k = 1..3, observed at 40 points at time t = 0.05:

    u(x, t; y) = Σ_k a_k exp(−κ k² π² t) sin(kπx),   y = (κ, a_1, a_2, a_3)

κ ~ U[0.1, 1], a_k ~ U[−1, 1]. The surrogate maps y ∈ R^4 to the 40 observations, as in the
paper's CDR experiment (least squares, antisymmetric RK4 ResNet of width 8).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from .models import paper_network
from .problems.base import Split
from .train import train

N_OBS, T_OBS = 40, 0.05


def heat_family(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples (y, u) of the parametric heat-equation solution (float64)."""
    kappa = 0.1 + 0.9 * torch.rand(n, 1, generator=generator, dtype=torch.float64)
    a = 2 * torch.rand(n, 3, generator=generator, dtype=torch.float64) - 1
    x = torch.linspace(0, 1, N_OBS + 2, dtype=torch.float64)[1:-1]
    k = torch.arange(1, 4, dtype=torch.float64)
    decay = torch.exp(-kappa * (k * math.pi) ** 2 * T_OBS)  # (n, 3)
    modes = torch.sin(k[:, None] * math.pi * x[None, :])  # (3, N_OBS)
    return torch.cat([kappa, a], 1), (a * decay) @ modes


def demo_problem(seed: int = 0, n_train: int = 500, n_val: int = 200) -> Split:
    g = torch.Generator().manual_seed(seed)
    y, u = heat_family(n_train + 2 * n_val, g)
    a, b = n_train, n_train + n_val
    return Split(y[:a], u[:a], y[a:b], u[a:b], y[b:], u[b:], meta={"name": "heat"})


def run_demo(out: Path | str = "out/demo", progress: bool = True, max_work: float = 300.0,
             seed: int = 0, threads: int | None = 1) -> dict:
    """Train GNvpro (truncated GN: "gnvpro-tn"; the paper's trust region: "gnvpro") and ADAM
    from the same start; print a table and write convergence.png.

    threads=1 (default): this problem is small, and one thread avoids oversubscription.
    """
    if threads:
        torch.set_num_threads(threads)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = demo_problem(seed)
    start = paper_network(4, N_OBS, width=8, generator=torch.Generator().manual_seed(seed))
    runs = {}
    methods = (("gnvpro-tn", {}), ("gnvpro", {}),
               ("adam", {"lr": 1e-3, "batch_size": 10}))
    for warm_up in (True, False):  # a short throw-away run first: no method pays first calls
        for method, extra in methods:
            model = paper_network(4, N_OBS, width=8)
            model.load_state_dict(start.state_dict())
            settings = {"alpha_w": 1e-10, "alpha_theta": 1e-10,
                        "max_work": 10 if warm_up else max_work,
                        "progress": progress and not warm_up, "seed": seed, **extra}
            t = time.perf_counter()
            records = train(method, model, data, settings)
            runs[method] = {"records": records, "seconds": time.perf_counter() - t}

    lines = [f"{'method':10s} {'train loss':>12s} {'val loss':>12s} {'val rel.err':>12s} "
             f"{'work units':>10s} {'seconds':>8s}"]
    for method, run in runs.items():
        last = run["records"][-1]
        lines.append(
            f"{method:10s} {last['metrics']['train']['loss']:12.4e} "
            f"{last['metrics']['val']['loss']:12.4e} {last['metrics']['val']['rel_err']:12.4e} "
            f"{last['work_units']:10.0f} {last['seconds']:8.2f}"
        )
    table = "\n".join(lines)
    print(table)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for method, run in runs.items():
        recs = run["records"]
        for ax, key in zip(axes, ("work_units", "seconds"), strict=True):
            xs = [r[key] for r in recs]
            ax.semilogy(xs, [r["metrics"]["train"]["loss"] for r in recs], label=f"{method} train")
            ax.semilogy(xs, [r["metrics"]["val"]["loss"] for r in recs], "--",
                        label=f"{method} validation")
    axes[0].set_xlabel("work units (forward/backward passes over the training set)")
    axes[1].set_xlabel("seconds")
    for ax in axes:
        ax.set_ylabel("loss  1/(2n)‖S − C‖²")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("GNvpro (truncated GN, trust region) vs ADAM on the parametric heat equation")
    figure = out / "convergence.png"
    fig.savefig(figure, dpi=120)
    plt.close(fig)
    print(f"figure: {figure}")
    return {"table": table, "figure": str(figure), "runs": runs}
