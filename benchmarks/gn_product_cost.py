"""Cost of one Gauss-Newton product H_GN v relative to one forward + backward pass.

For each model and every J_Z mode in gnvpro.autodiff.JVP_MODES (but "auto": the last column
shows which mode it picks) this prints

- ``Hv/(f+b)``: one GNvpro product ÷ one forward+backward pass of the whole model on the same
  data with the least-squares loss 1/(2n)‖model(x) − y‖²;
- ``setup/(f+b)``: the once-per-point set-up ÷ (f+b): the time of (pt.vjp_fn = None, build
  gn_operator, first product) minus one product: the recorded forward pass, and for
  "double-backward" the graph of u ↦ J_Zᵀu, for "linearize" its trace;
- ``curvlinops``: curvlinops-for-pytorch's GGNLinearOperator matvec (all model parameters,
  MSELoss(reduction="sum"), full batch; only ``G @ v`` is timed, after construction) ÷ (f+b),
  or "-" when curvlinops is not installed (``pip install -e .[bench]``).

Every timed function is warmed up first; each ratio is the median over several timed blocks of
(its block mean) ÷ (the f+b block mean timed right before it), so that a change of machine load
hits numerator and denominator alike.
Ratios, not seconds, are what to compare across machines. Random data of each problem's shape.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gn_product_cost.py [--cnn] [--level L]
        [--blocks 7] [--block-s 0.15] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from gnvpro import ReducedObjective, autodiff, make_loss, split_model
from gnvpro_experiments.models import mlp, paper_cnn, paper_network
from gnvpro_experiments.models.resnet import refine_network

MODES = tuple(m for m in autodiff.JVP_MODES if m != "auto")  # "auto" picks one of these

try:
    from curvlinops import GGNLinearOperator
except ImportError:  # benchmark-only dependency
    GGNLinearOperator = None


def _times(fns, blocks: int, block_s: float) -> list[list[float]]:
    """Per-block mean time per call of each of `fns` (after a warm-up); the blocks of the
    functions are interleaved, so a change of machine load hits all of them alike."""
    reps = []
    for fn in fns:
        t = time.perf_counter()
        for _ in range(3):  # warm-up (torch.func's first call is slow)
            fn()
        reps.append(max(1, int(block_s / max((time.perf_counter() - t) / 3, 1e-7))))
    out = [[] for _ in fns]
    for _ in range(blocks):
        for fn, r, means in zip(fns, reps, out, strict=True):
            t = time.perf_counter()
            for _ in range(r):
                fn()
            means.append((time.perf_counter() - t) / r)
    return out


def bench(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
          blocks: int, block_s: float) -> dict:
    split = split_model(model, probe=x)

    def forward_backward():
        model.zero_grad()
        (0.5 / len(x) * (model(x) - y).square().sum()).backward()

    fbs = []  # (f+b) is timed in the same interleaved blocks as each product it divides

    def ratio(fn) -> list[float]:
        fb, t = _times([forward_backward, fn], blocks, block_s)
        fbs.extend(fb)
        return [a / b for a, b in zip(t, fb, strict=True)]

    row = {"model": name, "n": len(x), "params": sum(p.numel() for p in model.parameters())}
    theta = torch.cat([p.detach().reshape(-1).double()
                       for p in split.feature_params().values()])
    v = torch.randn_like(theta)
    if hasattr(autodiff, "resolve_jvp_mode"):
        row["auto"] = autodiff.resolve_jvp_mode("auto", model)
    for mode in MODES:
        obj = ReducedObjective(split, make_loss("least_squares"), x, y, 1e-10, 1e-10,
                               jvp_mode=mode)
        pt = obj.evaluate(theta)

        def setup(obj=obj, pt=pt):
            pt.vjp_fn = None
            obj.gn_operator(pt)(v)

        H = obj.gn_operator(pt)
        fb, first, hv = _times([forward_backward, setup, lambda H=H: H(v)], blocks, block_s)
        fbs.extend(fb)
        row[mode] = {
            "hv": statistics.median(a / b for a, b in zip(hv, fb, strict=True)),
            "setup": statistics.median((a - c) / b for a, c, b in zip(first, hv, fb,
                                                                      strict=True)),
        }
    if GGNLinearOperator is not None:
        params = [p for p in model.parameters() if p.requires_grad]
        G = GGNLinearOperator(model, torch.nn.MSELoss(reduction="sum"), params, [(x, y)])
        w = torch.randn(sum(p.numel() for p in params), dtype=x.dtype)
        row["curvlinops"] = statistics.median(ratio(lambda: G @ w))
    row["fb_ms"] = 1e3 * statistics.median(fbs)
    return row


def print_table(rows: list[dict]) -> None:
    short = {"double-backward": "dbl-bwd", "linearize": "lin"}
    cols = "".join(f" {short.get(m, m)[:8]:>8s}" for m in MODES)
    w = 9 * len(MODES)
    print(f"\n{'':33s}{'':>8s} |{'Hv / (f+b)':^{w}s} |{'setup / (f+b)':^{w}s} |"
          f"{'curvlinops':>11s} | auto")
    print(f"{'model':33s}{'f+b ms':>8s} |{cols} |{cols} |{'Gv / (f+b)':>11s} | mode")
    for r in rows:
        hv = "".join(f" {r[m]['hv']:8.2f}" for m in MODES)
        su = "".join(f" {r[m]['setup']:8.2f}" for m in MODES)
        cl = f"{r['curvlinops']:11.2f}" if "curvlinops" in r else f"{'-':>11s}"
        auto = short.get(r.get("auto", "-"), r.get("auto", "-"))
        print(f"{r['model']:33s}{r['fb_ms']:8.2f} |{hv} |{su} |{cl} | {auto}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cnn", action="store_true",
                    help="also the paper CNN on 500 28x28 images (slow on a CPU)")
    ap.add_argument("--level", type=int, default=1,
                    help="multilevel level of the CDR and Indian Pines ResNets (1 = initial)")
    ap.add_argument("--blocks", type=int, default=7, help="timed blocks per median")
    ap.add_argument("--block-s", type=float, default=0.15, help="seconds per timed block")
    ap.add_argument("--json", metavar="PATH", help="write the ratios to PATH")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s)"
          + ("" if GGNLinearOperator else "; curvlinops not installed: no curvlinops column"))
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)

    def refined(net, follow):
        for _ in range(args.level - 1):
            net = refine_network(net, follow)
        return net

    lv = f" L{args.level}" if args.level > 1 else ""
    problems = [  # (name, model, n, input shape, outputs, dtype)
        (f"CDR ResNet 55→8, head 72{lv}",
         refined(paper_network(55, 72, width=8, generator=g), False), 400, (55,), 72,
         torch.float64),
        # indian-pines.toml / runner.build_model: width 32, 4 nodes, 3 RK4 steps, T = 4
        (f"Indian Pines ResNet 200→32, 16{lv}",
         refined(paper_network(200, 16, 32, n_nodes=4, T=4.0, n_steps=3, generator=g), True),
         2955, (200,), 16, torch.float64),
        ("MLP 10→16→16→1 tanh", mlp(10, [16, 16], 1, generator=g), 442, (10,), 1,
         torch.float64),
    ]
    if args.cnn:
        problems.append(("paper CNN 1×28×28, head 10 (f32)",
                         paper_cnn(1, 10, generator=g, dtype=torch.float32), 500, (1, 28, 28),
                         10, torch.float32))
    rows = []
    for name, model, n, shape, c, dtype in problems:
        x = torch.randn(n, *shape, dtype=dtype)
        y = torch.randn(n, c, dtype=dtype)
        rows.append(bench(name, model, x, y, args.blocks, args.block_s))
        print(f"  done: {name} ({rows[-1]['params']} parameters, n = {n})", flush=True)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "torch": torch.__version__,
                       "curvlinops_loss": "MSELoss(reduction='sum'), all parameters",
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
