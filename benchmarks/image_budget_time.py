"""Projected wall time of the paper-budget image runs (CIFAR-10 / Fashion-MNIST) on this machine.

A full-budget CIFAR-10 run (2 epochs × 4 sub-batches × 3 GNvpro iterations on 10000 images
each; 200 SGD epochs of batch 128) takes hours on a 2-core CPU. This script runs the real
training code on the full-size split for a measured prefix of each budget and projects the
rest from it (the prefix and the projection are printed side by side):

    gnvpro-stochastic / gn-stochastic: the start and the first ``--iters`` iterations are timed;
        every iteration is taken to cost the same (GNvpro-stochastic used all 30 Krylov vectors
        in every iteration of the GPU runs), a later sub-batch adds one re-evaluation (≈ the
        start).
    sgd / adam: the first ``--epochs`` epochs are timed (per-epoch cost constant).
    lbfgs-vpro-stochastic: the first ``--iters`` iterations; a sub-batch = 30 of them.

    .venv/bin/python benchmarks/image_budget_time.py cifar10 [--jvp-mode linearize] [--device cuda]

Seconds are the methods' own clocks (training only; the validation metrics taken after every
record are timed separately and added to the projected wall time).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from gnvpro_experiments.config import load_config
from gnvpro_experiments.data import build_data, build_model, load_problem_data, to_device
from gnvpro_experiments.train import train

SUB_BATCH = ("gnvpro-stochastic", "gn-stochastic", "lbfgs-vpro-stochastic")


def _val_seconds(model: torch.nn.Module, data, repeats: int = 2) -> float:
    with torch.no_grad():
        model(data.x_val[:256])
        t = time.perf_counter()
        for _ in range(repeats):
            model(data.x_val)
    return (time.perf_counter() - t) / repeats


def project(method: str, cfg, model0, data, args) -> dict:
    kw = cfg.method_settings(method, 1)
    model = copy.deepcopy(model0).to(args.device)
    if method in SUB_BATCH:
        epochs, n_batches = int(kw["epochs"]), int(kw["n_batches"])
        per_batch = int(kw["iters_per_batch"])
        measured = min(per_batch, args.iters)
        kw.update(max_iter=measured)
        recs = train(method, model, data, kw)
        start, its = recs[0]["seconds"], recs[-1]["seconds"] - recs[0]["seconds"]
        block = its * per_batch / measured  # one sub-batch's iterations
        n_blocks = epochs * n_batches
        total = start + n_blocks * block + (n_blocks - 1) * start
        n_records = n_blocks * per_batch + 1
        what = f"start + {measured} of {per_batch} iterations on sub-batch 1"
    else:
        epochs = int(round(float(kw["max_work"]) / 2))
        kw.update(max_work=2.0 * args.epochs, keep_best_val=False)
        recs = train(method, model, data, kw)
        per_epoch = (recs[-1]["seconds"] - recs[0]["seconds"]) / args.epochs
        total = recs[0]["seconds"] + epochs * per_epoch
        n_records = epochs + 1
        what = f"{args.epochs} of {epochs} epochs"
    val = _val_seconds(model, data)
    return {"method": method, "measured": what, "measured_s": recs[-1]["seconds"],
            "projected_train_s": total, "projected_wall_s": total + n_records * val}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", choices=["cifar10", "fashion-mnist"])
    ap.add_argument("--data", default=None, help="data file / directory (default: the usual)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default="gnvpro-stochastic,sgd")
    ap.add_argument("--epochs", type=int, default=1, help="SGD/ADAM epochs to time")
    ap.add_argument("--iters", type=int, default=1, help="sub-batch iterations to time")
    ap.add_argument("--subset", type=int, default=None, help="fewer images (a smoke test)")
    ap.add_argument("--jvp-mode", choices=["jvp", "linearize"], default=None)
    args = ap.parse_args(argv)
    cfg = load_config(args.experiment).with_data(subset=args.subset)
    cfg = cfg.with_jvp_mode(args.jvp_mode)
    data = build_data(cfg, load_problem_data(cfg, args.data, False), 0)
    data_dev = to_device(data, args.device)
    model0 = build_model(cfg, data, 0)
    print(f"{args.experiment}: {len(data.x_train)} train / {len(data.x_val)} val images, "
          f"device {args.device}, {torch.get_num_threads()} threads, "
          f"jvp_mode {args.jvp_mode or 'jvp'}")
    print("| method | measured | measured s | projected training s | projected wall s |")
    print("|---|---|---|---|---|")
    for method in args.methods.split(","):
        r = project(method, cfg, model0, data_dev, args)
        print(f"| {r['method']} | {r['measured']} | {r['measured_s']:.0f} | "
              f"{r['projected_train_s']:.0f} ({r['projected_train_s'] / 3600:.2f} h) | "
              f"{r['projected_wall_s']:.0f} ({r['projected_wall_s'] / 3600:.2f} h) |", flush=True)


if __name__ == "__main__":
    main()
