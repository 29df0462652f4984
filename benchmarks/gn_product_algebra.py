"""The Gauss-Newton product's VarPro algebra: this tree's ``VarProJacobian.gauss_newton``
against the one of a git revision, in one process, on the same points.

The product H_GN v = J_Sᵀ H_S[J_S v] + α_W J_Wᵀ J_W v + α_θ BᵀB v of a revision is loaded from
``git show REV:src/gnvpro/jacobian.py`` (varpro.py before it existed): its ``gauss_newton`` and
``_hs``, bound to this tree's VarProJacobian, so both run on the same objective, point and
direction. Printed per problem:

- ``product ms``: the median over interleaved timed blocks of one product (base, head), and
  head ÷ base;
- ``TN iteration ms``: GNvpro's default (truncated Gauss-Newton, ≤ 10 products an iteration)
  from the same start for ``--steps`` iterations with each product, the mean per iteration
  (best of ``--repeats``), and head ÷ base; the two runs' final Φ (the same up to rounding);
- ``rel. diff``: ‖H v (head) − H v (base)‖ / ‖H v (base)‖ at the point.

Problems: benchmarks/peers.py's (``--problems``, default the cross-entropy ones and diabetes),
and with ``--indian-pines`` the paper's Indian Pines ResNet (its data file must be found, see
docs/experiments.md). One torch thread; float64.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gn_product_algebra.py --baseline 2e1873d \\
        [--problems synth20,wine,breast-cancer,diabetes] [--indian-pines] [--steps 20]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

import gnvpro
import gnvpro.jacobian as jacobian
import gnvpro.varpro as varpro

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402  (benchmarks/peers.py: the problems)


def base_jacobian(rev: str) -> type:
    """VarProJacobian with the revision's gauss_newton and _hs (the rest is this tree's)."""
    def show(path: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)

    got = show("src/gnvpro/jacobian.py")
    src = (got if got.returncode == 0 else show("src/gnvpro/varpro.py")).stdout
    if "def gauss_newton" not in src:
        raise SystemExit(f"no VarProJacobian.gauss_newton at revision {rev!r}")
    ns = {**jacobian.__dict__, "_accumulate": jacobian.accumulate}  # its name before 2026-12
    for start, end in (("    def gauss_newton(self, v: Tensor)", "    def _gauss_newton_scalar"),
                       ("    def _hs(self, k: int, U: Tensor)", "    def loss_hessian(")):
        exec(textwrap.dedent(src[src.index(start): src.index(end)]), ns)  # noqa: S102
    return type("BaseJacobian", (jacobian.VarProJacobian,),
                {"gauss_newton": ns["gauss_newton"], "_hs": ns["_hs"]})


def _blocks(fns: dict, blocks: int = 7, reps: int = 20) -> dict[str, float]:
    """Median over interleaved blocks of the mean seconds per call of each function."""
    for f in fns.values():
        for _ in range(3):
            f()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(blocks):
        for k, f in fns.items():
            t = time.perf_counter()
            for _ in range(reps):
                f()
            out[k].append((time.perf_counter() - t) / reps)
    return {k: statistics.median(v) for k, v in out.items()}


def _tn_run(model, kind, x, y, aw, at, steps: int, jac: type | None) -> tuple[float, float]:
    """(seconds per TN iteration, final Φ) with the Jacobian class ``jac`` (None: this tree's)."""
    opt = gnvpro.GNvpro(copy.deepcopy(model), loss=kind, alpha_w=aw, alpha_theta=at,
                        config=gnvpro.GNvproConfig.truncated_gauss_newton(threads=1))
    saved = varpro.ReducedObjective.jacobian
    if jac is not None:
        varpro.ReducedObjective.jacobian = lambda self, pt: jac(self, pt)
    try:
        opt.set_batch(x, y)
        t = time.process_time()
        for _ in range(steps):
            info = opt.step(x, y)
        return (time.process_time() - t) / steps, info.loss
    finally:
        varpro.ReducedObjective.jacobian = saved


def bench(name: str, model, kind, x, y, aw, at, base: type, steps: int, repeats: int) -> dict:
    opt = gnvpro.GNvpro(copy.deepcopy(model), loss=kind, alpha_w=aw, alpha_theta=at,
                        config=gnvpro.GNvproConfig.truncated_gauss_newton(threads=1))
    for _ in range(2):
        opt.step(x, y)
    pt, obj = opt.state.pt, opt.problem
    head, old = obj.jacobian(pt), base(obj, pt)
    v = torch.randn(pt.theta.numel(), dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    hv, bv = head.gauss_newton(v), old.gauss_newton(v)
    t = _blocks({"base": lambda: old.gauss_newton(v), "head": lambda: head.gauss_newton(v)})
    it = {"base": [], "head": []}
    phi = {}
    for _ in range(repeats):
        for k, jac in (("base", base), ("head", None)):
            s, phi[k] = _tn_run(model, kind, x, y, aw, at, steps, jac)
            it[k].append(s)
    return {"problem": name, "base_ms": 1e3 * t["base"], "head_ms": 1e3 * t["head"],
            "it_base_ms": 1e3 * min(it["base"]), "it_head_ms": 1e3 * min(it["head"]),
            "phi_base": phi["base"], "phi_head": phi["head"],
            "rel_diff": float((hv - bv).norm() / bv.norm())}


def _indian_pines():
    from gnvpro_experiments.config import load_config
    from gnvpro_experiments.data import build_data, build_model, load_problem_data

    cfg = load_config("indian-pines")
    split = build_data(cfg, load_problem_data(cfg, None, False), 0)
    return (build_model(cfg, split, 0), "cross_entropy", split.x_train.double(), split.y_train,
            cfg.alpha_w, cfg.alpha_theta)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="2e1873d", help="git revision of the base product")
    ap.add_argument("--problems", default="synth20,wine,breast-cancer,diabetes")
    ap.add_argument("--indian-pines", action="store_true")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    base = base_jacobian(args.baseline)
    runs = []
    for name in filter(None, args.problems.split(",")):
        p = peers.make_problem(name, 0)
        runs.append((name, (p.model, p.kind, p.x, p.y, p.alpha_w, p.alpha_theta)))
    if args.indian_pines:
        runs.append(("indian-pines", _indian_pines()))
    print(f"torch {torch.__version__}, 1 thread, float64; base = {args.baseline}, head = this "
          f"tree; TN: GNvproConfig.truncated_gauss_newton() for {args.steps} "
          f"iterations, best of {args.repeats}\n")
    print("| problem | product ms base | head | head ÷ base | TN iteration ms base | head | "
          "head ÷ base | Φ after base | head | rel. diff H v |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, prob in runs:
        r = bench(name, *prob, base, args.steps, args.repeats)
        print(f"| {name} | {r['base_ms']:.3f} | {r['head_ms']:.3f} | "
              f"{r['head_ms'] / r['base_ms']:.2f} | {r['it_base_ms']:.1f} | "
              f"{r['it_head_ms']:.1f} | {r['it_head_ms'] / r['it_base_ms']:.2f} | "
              f"{r['phi_base']:.6e} | {r['phi_head']:.6e} | {r['rel_diff']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
