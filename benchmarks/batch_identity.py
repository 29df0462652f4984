"""Cost of deciding "same batch" by data (gnvpro.methods.base.same_data) relative to a forward
pass, on a batch of the given shape (default 10000 × 3072 float32, CIFAR-10 sized).

Prints the median seconds of: the identity fast path (the remembered tensors themselves), the
bitwise comparison with a clone (same data: one full pass over both), with other data (stops at
the first difference), and no-grad forward passes of Linear(d, 100) and a d-256-10 tanh MLP.

    .venv/bin/python benchmarks/batch_identity.py [--n 10000] [--d 3072] [--repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from gnvpro.methods.base import BatchIdentity


def median_seconds(f: Callable[[], object], repeats: int) -> float:
    """The median wall time of f() over ``repeats`` calls after one warm-up call."""
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--d", type=int, default=3072)
    ap.add_argument("--repeats", type=int, default=9)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(a.n, a.d, generator=g), torch.randn(a.n, 10, generator=g)
    other = torch.randn(a.n, a.d, generator=g)
    lin = nn.Linear(a.d, 100)
    mlp = nn.Sequential(nn.Linear(a.d, 256), nn.Tanh(), nn.Linear(256, 10))
    ident = BatchIdentity(mlp)
    ident.remember(x, y)
    xc, yc = x.clone(), y.clone()
    rows = {
        "identity (same tensors)": lambda: ident.same(x, y),
        "same data (clones)": lambda: ident.same(xc, yc),
        "other data": lambda: ident.same(other, y),
    }
    with torch.no_grad():
        rows[f"forward Linear({a.d}, 100)"] = lambda: lin(x)
        rows[f"forward MLP {a.d}-256-10"] = lambda: mlp(x)
        print(f"{a.n} x {a.d} float32, {torch.get_num_threads()} threads, median of "
              f"{a.repeats}")
        for name, f in rows.items():
            print(f"{name:28s} {1e3 * median_seconds(f, a.repeats):9.3f} ms")
    assert ident.same(xc, yc) and not ident.same(other, y)


if __name__ == "__main__":
    main()
