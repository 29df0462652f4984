"""Cost of one Gauss-Newton product H_GN v relative to one forward + backward pass.

Measured in one process on the same data, so the printed ratios (not the seconds) are what to
compare across machines. Work units count a GN product as 2 (one JVP + one VJP); this shows
what it really costs, with the per-outer-step set-up (linearisation) reported separately.

    .venv/bin/python benchmarks/gn_product_cost.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import time

import torch

from gnvpro import ReducedObjective, make_loss, split_model
from gnvpro.models import mlp, paper_cnn, paper_network


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def bench(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int):
    split = split_model(model, probe=x)
    params = list(model.parameters())

    def forward_backward():
        model.zero_grad()
        (0.5 / len(x) * (model(x) - y).square().sum()).backward()

    t_fb = _time(forward_backward, repeats)
    rows = []
    for mode in ("jvp", "linearize"):
        obj = ReducedObjective(split, make_loss("least_squares"), x, y, 1e-10, 1e-10,
                               jvp_mode=mode)
        feats = split.feature_params().values()
        theta = torch.cat([p.detach().reshape(-1).double() for p in feats])
        pt = obj.evaluate(theta)
        t_setup = _time(lambda obj=obj, pt=pt: obj.gn_operator(pt), max(2, repeats // 5))
        H = obj.gn_operator(pt)
        v = torch.randn_like(theta)
        t_hv = _time(lambda H=H, v=v: H(v), repeats)
        t_eval = _time(lambda obj=obj, theta=theta: obj.gradient(obj.evaluate(theta)), repeats)
        rows.append((mode, t_hv / t_fb, t_setup / t_fb, t_eval / t_fb))
    n_par = sum(p.numel() for p in params)
    print(f"\n{name}: n = {len(x)}, {n_par} parameters, forward+backward {t_fb * 1e3:.2f} ms")
    print(f"  {'J_Z mode':10s} {'H v / (f+b)':>12s} {'set-up / (f+b)':>15s} {'Φ+∇Φ / (f+b)':>14s}")
    for mode, r_hv, r_setup, r_eval in rows:
        print(f"  {mode:10s} {r_hv:12.2f} {r_setup:15.2f} {r_eval:14.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--cnn", action="store_true",
                    help="also the paper CNN on 500 28x28 images (slow on a CPU)")
    args = ap.parse_args()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 55, dtype=torch.float64)
    y = torch.randn(400, 72, dtype=torch.float64)
    bench("CDR paper network (55→8, RK4 ResNet width 8, head 72)",
          paper_network(55, 72, width=8, generator=g), x, y, args.repeats)
    x = torch.randn(4000, 64, dtype=torch.float32)
    y = torch.randn(4000, 10, dtype=torch.float32)
    bench("wide MLP (64→256→256 tanh, head 10), float32",
          mlp(64, [256, 256], 10, dtype=torch.float32, generator=g), x, y, args.repeats)
    if args.cnn:  # timing only: random images of Fashion-MNIST's shape
        x = torch.randn(500, 1, 28, 28, dtype=torch.float32)
        y = torch.randn(500, 10, dtype=torch.float32)
        bench("paper CNN (conv 5x5 1→32, pool, conv 5x5 32→64, head 10), float32",
              paper_cnn(1, 10, generator=g, dtype=torch.float32), x, y,
              max(2, args.repeats // 5))


if __name__ == "__main__":
    main()
