"""A small MLP on Fashion-MNIST trained by GNvpro with the cross-entropy loss.

Features 784 → 64 → 32 (tanh), then the affine head nn.Linear(32, 10) that GNvpro eliminates:
W* (10 × 33) is solved by Newton's method in float64 at every θ, and a trust-region Gauss-Newton
method runs on the 52,320 feature weights θ. The network itself runs in float32.

Data: image_split("fashion-mnist", subset=N) (Debian package dataset-fashion-mnist), per-image
standardised and flattened; N training images, proportionally fewer validation and test images
(at least 1000 each). Stops after --max-work work units (docs/method.md section 4).

    python examples/fashion_mnist_mlp.py --subset 10000 --max-work 1000 --seed 0
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import gnvpro
from gnvpro_experiments.problems.images import image_split


def make_model(seed: int, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """784 → 64 → 32 tanh features (weights N(0, 2/fan_in), zero biases) + nn.Linear(32, 10)."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 64), nn.Tanh(), nn.Linear(64, 32), nn.Tanh(),
        nn.Linear(32, 10),
    ).to(dtype)  # fmt: skip
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                w = torch.randn(m.weight.shape, generator=gen, dtype=torch.float64)
                m.weight.copy_(w * (2.0 / m.in_features) ** 0.5)
                m.bias.zero_()
    return model


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).double().mean())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subset", type=int, default=10000, help="number of training images")
    ap.add_argument("--max-work", type=float, default=1000.0, help="work-unit budget")
    ap.add_argument("--seed", type=int, default=0, help="data split and weight seed")
    ap.add_argument("--alpha-w", type=float, default=1e-3, help="α_W (head regularisation)")
    ap.add_argument("--alpha-theta", type=float, default=1e-2, help="α_θ (feature weights)")
    ap.add_argument("--max-products", type=int, default=20,
                    help="Lanczos vectors (products with H) per iteration")
    ap.add_argument("--float64", action="store_true", help="run the network in float64")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (0: torch's default; 1 is fastest on a busy 2-core box)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.float64 if args.float64 else torch.float32

    t0 = time.perf_counter()
    data = image_split("fashion-mnist", subset=args.subset, seed=args.seed, dtype=dtype)
    x_tr, x_va, x_te = (x.reshape(len(x), -1) for x in (data.x_train, data.x_val, data.x_test))
    print(
        f"Fashion-MNIST: {len(x_tr)} train / {len(x_va)} val / {len(x_te)} test images "
        f"(loaded in {time.perf_counter() - t0:.1f} s), network in {dtype}"
    )

    model = make_model(args.seed, dtype)
    config = gnvpro.GNvproConfig.trust_region(
        descent=gnvpro.LanczosSubspace(max_products=args.max_products, rtol=1e-2))
    opt = gnvpro.GNvpro(model, loss="cross_entropy", alpha_w=args.alpha_w,
                        alpha_theta=args.alpha_theta, config=config)

    def report(rec: gnvpro.StepInfo) -> None:
        val = rec.metrics["val"]["accuracy"]
        print(
            f"  it {rec.iteration:3d}  WU {rec.work_units:5.0f}  {rec.seconds:6.1f} s  "
            f"loss {rec.loss:.4f}  train acc {rec.metrics['train']['accuracy']:.4f}  "
            f"val acc {val:.4f}  radius {rec.radius:.2e}  {rec.outcome:<26s} "
            f"inner {rec.inner_iterations} it ({rec.inner_seconds:.1f} s in all)"
        )

    hist = opt.run(x_tr, data.y_train, max_work=args.max_work, val=(x_va, data.y_val),
                   callback=report)
    final = hist.final
    seconds = final.seconds if final else 0.0
    res = {
        "train": accuracy(model, x_tr, data.y_train),
        "val": accuracy(model, x_va, data.y_val),
        "test": accuracy(model, x_te, data.y_test),
        "seconds": seconds,
        "work_units": final.work_units if final else 0.0,
        "iterations": final.iteration if final else 0,
        "inner_seconds": final.inner_seconds if final else 0.0,
        "inner_not_converged": sum(not r.inner_converged for r in hist.records),
    }
    print(
        f"train acc {res['train']:.4f}  val acc {res['val']:.4f}  test acc {res['test']:.4f}  "
        f"| {res['iterations']} iterations, {res['work_units']:.0f} WU, {seconds:.1f} s "
        f"(inner solve {res['inner_seconds']:.1f} s, unconverged {res['inner_not_converged']}), "
        f"stop: {hist.termination.value}"
    )
    return res


if __name__ == "__main__":
    main()
