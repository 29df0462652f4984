"""Peak memory and time of one outer iteration's work, the objective in one pass against chunks.

On the DCR shape (8000 × 3 inputs, 882 outputs, the level-1 ResNet of width 16 of
src/gnvpro_experiments/configs/dcr.toml; synthetic data of that shape, float64) or, with
``--problem cnn``, the CIFAR-10 sub-batch shape (n random 3×32×32 images, 10 classes, the paper
CNN in float32 with `linearize` J_Z products (``--jvp-mode``), cross-entropy, α_W = 5e-3,
α_θ = 1e-4, as in src/gnvpro_experiments/configs/cifar10.toml), each setting in a fresh
process: build ReducedObjective, do the work once (torch's lazy initialisation), return freed memory
(malloc_trim) and reset the peak (``echo 5 > /proc/self/clear_refs``), then do it again:
evaluate Φ_red, ∇Φ_red and ``--products`` Gauss-Newton products (a truncated-GN step's work).
Reported: the peak resident memory (VmHWM) above the resident memory before that second pass,
and its seconds. The data and model are the same in every setting.

    .venv/bin/python benchmarks/memory.py [--n 8000] [--chunks 8] [--products 10] [--threads 1]
    .venv/bin/python benchmarks/memory.py --problem cnn --n 2000 --chunks 4 --products 10 \\
        [--jvp-mode linearize|jvp|double-backward]

Last line: ``peak ratio chunked/unchunked: X`` (chunks with memory="recompute" over one pass).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import time


def _vm(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status (Linux only)")


def child(problem: str, n: int, chunks: int, memory: str, products: int, threads: int,
          jvp_mode: str = "linearize") -> dict:
    import torch

    from gnvpro import ReducedObjective, make_loss, split_model
    from gnvpro_experiments.models import paper_cnn, paper_network

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    if problem == "cnn":
        x = torch.randn(n, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (n,), generator=g)
        model = paper_cnn(3, 10, generator=g, dtype=torch.float32)
        obj = ReducedObjective(split_model(model, probe=x[:8]), make_loss("cross_entropy"), x,
                               y, 5e-3, 1e-4, jvp_mode=jvp_mode, chunks=chunks,
                               memory=memory)
    else:
        x = torch.rand(n, 3, generator=g, dtype=torch.float64)
        y = torch.randn(n, 882, generator=g, dtype=torch.float64)
        model = paper_network(3, 882, width=16, n_nodes=2, n_steps=1, generator=g)
        obj = ReducedObjective(split_model(model, probe=x), make_loss("least_squares"), x, y,
                               1e-10, 1e-10, chunks=chunks, memory=memory)
    theta = obj.features.layout.flatten(obj.split.feature_params(), torch.float64).detach()
    v = torch.randn(theta.numel(), generator=g, dtype=torch.float64)

    def work() -> None:
        pt = obj.evaluate(theta)
        obj.gradient(pt)
        H = obj.gn_operator(pt)
        for _ in range(products):
            H(v)

    work()  # warm-up (torch's lazy initialisation), then its freed memory back to the system
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _vm("VmRSS")
    t0 = time.perf_counter()
    work()
    seconds = time.perf_counter() - t0
    return {"chunks": chunks, "memory": memory, "peak_bytes": _vm("VmHWM") - base,
            "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", choices=("dcr", "cnn"), default="dcr")
    ap.add_argument("--n", type=int, default=8000)
    ap.add_argument("--jvp-mode", default="linearize",
                    choices=("linearize", "jvp", "double-backward"), help="cnn: J_Z products")
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--products", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", nargs=2, metavar=("CHUNKS", "MEMORY"))
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.problem, a.n, int(a.child[0]), a.child[1], a.products,
                               a.threads, a.jvp_mode)))
        return
    rows = []
    for chunks, memory in [(1, "keep"), (a.chunks, "keep"), (a.chunks, "recompute")]:
        out = subprocess.run([sys.executable, __file__, "--problem", a.problem, "--jvp-mode",
                              a.jvp_mode, "--n", str(a.n), "--products",
                              str(a.products), "--threads", str(a.threads), "--child",
                              str(chunks), memory], check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.splitlines()[-1]))
    shape = (f"3x32x32 images, 10 classes, paper CNN (float32, {a.jvp_mode})"
             if a.problem == "cnn" else "882 outputs, ResNet width 16")
    print(f"n = {a.n}, {shape}; evaluate + gradient + {a.products} GN products; "
          f"{a.threads} thread(s)")
    print(f"{'chunks':>6} {'memory':>9} {'peak MB':>9} {'seconds':>8}")
    for r in rows:
        print(f"{r['chunks']:>6} {r['memory']:>9} {r['peak_bytes'] / 2**20:>9.1f} "
              f"{r['seconds']:>8.2f}")
    print(f"seconds ratio chunked/unchunked: {rows[2]['seconds'] / rows[0]['seconds']:.2f}")
    print(f"peak ratio chunked/unchunked: {rows[2]['peak_bytes'] / rows[0]['peak_bytes']:.3f}")


if __name__ == "__main__":
    main()
