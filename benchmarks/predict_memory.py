"""Peak memory of predictions with the paper's CNN: one forward pass over the whole set against
gnvpro.metrics.predict's blocks of rows (what fit's validation metrics use), and SGD's
epoch-end objective (FirstOrder.current(), the whole training batch: one pass until it went
through predict).

Each setting runs in a fresh process on random CIFAR-10-shaped images (float32, the paper CNN of
src/gnvpro_experiments/models/cnn.py, no autograd graph); reported is the rise of the peak
resident memory (VmHWM, reset through /proc/self/clear_refs just before) during the predictions.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/predict_memory.py [--n 10000] \\
        [--rows 4096,1024]

Last line: ``peak ratio rows=R/one pass: X`` for the smallest R.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from memory import _vm  # benchmarks/memory.py: /proc/self/status in bytes

SGD_CURRENT = -1  # child's rows for FirstOrder.current()


def child(n: int, rows: int) -> int:
    """MB of peak-memory rise of the predictions on n images (rows 0: one forward pass;
    SGD_CURRENT: an SGD method's current() on the batch of the n images)."""
    import torch

    import gnvpro
    from gnvpro.metrics import predict
    from gnvpro_experiments.models import paper_cnn

    torch.set_num_threads(1)
    model = paper_cnn(3, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    predict(model, x[:8])  # lazy initialisation outside the measurement
    if rows == SGD_CURRENT:
        y = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(2))
        method = gnvpro.FirstOrder(model, loss="cross_entropy", alpha_w=1e-2,
                                   config=gnvpro.FirstOrderConfig(optimizer="sgd"))
        method.set_batch(x[:16], y[:16])  # W*(θ0) on a few images (its own peak is not ours)
        method.set_batch(x, y)  # the targets of the whole batch
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _vm("VmRSS")
    with torch.no_grad():
        if rows == SGD_CURRENT:
            S = method.current().S
        else:
            S = model(x) if rows == 0 else predict(model, x, rows)
    assert S.shape == (n, 10)
    return (_vm("VmHWM") - before) // 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--rows", default="4096,1024")
    ap.add_argument("--child", type=int, nargs=2, metavar=("N", "ROWS"))
    args = ap.parse_args()
    if args.child:
        print(child(*args.child))
        return
    rows = [0, *(int(r) for r in args.rows.split(",")), SGD_CURRENT]
    mb = {}
    for r in rows:
        out = subprocess.run([sys.executable, __file__, "--child", str(args.n), str(r)],
                             check=True, capture_output=True, text=True).stdout
        mb[r] = int(out.split()[-1])
    print(f"paper CNN, {args.n} CIFAR-10-shaped images, float32, one thread\n")
    print("| predictions | peak memory rise (MB) |\n|---|---|")
    for r in rows:
        label = ("one forward pass" if r == 0 else "SGD's current() (FirstOrder)"
                 if r == SGD_CURRENT else f"blocks of {r} rows")
        print(f"| {label} | {mb[r]} |")
    rows = [r for r in rows if r != SGD_CURRENT]
    r = min(rows[1:])
    print(f"\npeak ratio rows={r}/one pass: {mb[r] / max(mb[0], 1):.3f}")


if __name__ == "__main__":
    main()
