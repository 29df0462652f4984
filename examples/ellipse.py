"""The ellipse toy of the paper (docs/experiments.md section 1) trained by GNvpro.

Points inside the ellipse x = (r cos φ, 0.4 r sin φ), r ~ U[0, 1] (label 1) against the ring
r ~ U[1, 2] (label 0); 7000 of each, 5000 train / 1000 validation / 8000 test. Network: 2→4→4→2
tanh features and an affine 1×3 head (logistic loss), α_θ = 1e-6, α_W = 1e-8; GNvpro with
Krylov 10 vectors and tolerance 1e-3, inner Newton tolerance 1e-10, 50 outer iterations.

Accuracy is the true one, mean(prediction == label) (the reference halves its error count).

    python examples/ellipse.py --seed 0 --iters 50 --out runs/ellipse
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import gnvpro
from gnvpro_experiments.models import mlp
from gnvpro_experiments.problems.ellipse import ellipse_data

HIDDEN = (4, 4, 2)  # 2→4→4→2 tanh features, then the affine head 2+1 → 1


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """mean(pred == label) with pred = 1 where the logit is positive."""
    with torch.no_grad():
        pred = (model(x)[:, 0] > 0).long()
    return float((pred == y).double().mean())


def train(
    seed: int = 0,
    iters: int = 50,
    hidden: tuple[int, ...] = HIDDEN,
    jacobian: str = "full",
    log=print,
) -> dict:
    """Train the ellipse network with GNvpro; returns model, data, history, accuracies, seconds.

    jacobian="kaufman" drops dW*/dθ from the Gauss-Newton operator (ablation)."""
    data = ellipse_data(seed=seed)
    model = mlp(2, hidden, 1, activation="tanh", generator=torch.Generator().manual_seed(seed))
    config = gnvpro.GNvproConfig.trust_region(
        descent=gnvpro.LanczosSubspace(max_products=10, rtol=1e-3), jacobian=jacobian)
    opt = gnvpro.GNvpro(model, loss="logistic", alpha_theta=1e-6, alpha_w=1e-8, config=config)

    def report(rec: gnvpro.StepInfo) -> None:
        if rec.iteration % 10 == 0 or rec.iteration == 1:
            log(
                f"  it {rec.iteration:3d}  loss {rec.loss:.3e}  |g| {rec.grad_norm:.2e}  "
                f"radius {rec.radius:.2e}  {rec.outcome:<26s} inner {rec.inner_iterations:2d} it "
                f"|∇W| {rec.inner_grad_norm:.1e}  WU {rec.work_units:.0f}"
            )

    t0 = time.perf_counter()
    hist = opt.run(data.x_train, data.y_train, max_iter=iters, callback=report)
    seconds = time.perf_counter() - t0
    unconverged = sum(not r.inner_converged for r in hist.records)
    if unconverged:
        log(f"  warning: the inner solve did not converge in {unconverged} iteration(s)")
    return {
        "model": model,
        "data": data,
        "history": hist,
        "seconds": seconds,
        "work_units": hist.final.work_units if hist.final else 0.0,
        "train": accuracy(model, data.x_train, data.y_train),
        "val": accuracy(model, data.x_val, data.y_val),
        "test": accuracy(model, data.x_test, data.y_test),
    }


def plot_boundary(model: torch.nn.Module, data, path: Path, title: str = "") -> None:
    """Decision boundary (logit = 0) over the test points; misclassified points circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = torch.linspace(-2.2, 2.2, 400, dtype=torch.float64)
    ys = torch.linspace(-0.95, 0.95, 200, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    with torch.no_grad():
        prob = torch.sigmoid(model(grid)[:, 0]).reshape(gx.shape)
        wrong = (model(data.x_test)[:, 0] > 0).long() != data.y_test
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.contourf(gx, gy, prob, levels=20, cmap="RdBu_r", alpha=0.5)
    ax.contour(gx, gy, prob, levels=[0.5], colors="k", linewidths=1.5)
    x, y = data.x_test[:2000], data.y_test[:2000]
    ax.scatter(x[y == 1, 0], x[y == 1, 1], s=3, c="tab:red", label="inside (1)")
    ax.scatter(x[y == 0, 0], x[y == 0, 1], s=3, c="tab:blue", label="ring (0)")
    xw = data.x_test[wrong]
    ax.scatter(xw[:, 0], xw[:, 1], s=30, facecolors="none", edgecolors="k", label="misclassified")
    t = torch.linspace(0, 2 * torch.pi, 200)
    ax.plot(torch.cos(t), 0.4 * torch.sin(t), "g--", lw=1, label="true boundary")
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=7, markerscale=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="data split and weight seed")
    ap.add_argument("--iters", type=int, default=50, help="outer GNvpro iterations")
    ap.add_argument("--out", type=Path, default=Path("runs/ellipse"), help="output folder")
    ap.add_argument("--jacobian", choices=["full", "kaufman"], default="full",
                    help="Gauss-Newton Jacobian: full (default) or the Kaufman ablation")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest for this tiny network)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(f"ellipse toy, seed {args.seed}, {args.iters} GNvpro iterations ({args.jacobian} J)")
    res = train(args.seed, args.iters, jacobian=args.jacobian)
    hist = res["history"]
    print(
        f"train acc {res['train']:.4f}  val acc {res['val']:.4f}  test acc {res['test']:.4f}  "
        f"({res['seconds']:.2f} s, {res['work_units']:.0f} WU, "
        f"stop: {hist.termination.value})"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "" if args.jacobian == "full" else f"_{args.jacobian}"
    png = args.out / f"ellipse_boundary_seed{args.seed}{tag}.png"
    plot_boundary(res["model"], res["data"], png,
                  f"GNvpro, seed {args.seed}: test accuracy {res['test']:.4f}")
    print(f"decision boundary: {png}")
    return res


if __name__ == "__main__":
    main()
