"""Peak memory of validation predictions with the paper's CNN: one forward pass over the whole
set against gnvpro.metrics.predict's blocks of rows (what fit's validation metrics use).

Each setting runs in a fresh process on random CIFAR-10-shaped images (float32, the paper CNN of
src/gnvpro_experiments/models/cnn.py, no autograd graph); reported is the rise of the peak
resident memory (ru_maxrss) during the predictions.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/predict_memory.py [--n 10000] \\
        [--rows 4096,1024]

Last line: ``peak ratio rows=R/one pass: X`` for the smallest R.
"""

from __future__ import annotations

import argparse
import subprocess
import sys


def child(n: int, rows: int) -> int:
    """MB of peak-memory rise of the predictions on n images (rows 0: one forward pass)."""
    import resource

    import torch

    from gnvpro.metrics import predict
    from gnvpro_experiments.models import paper_cnn

    torch.set_num_threads(1)
    model = paper_cnn(3, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    predict(model, x[:8])  # lazy initialisation outside the measurement
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        S = model(x) if rows == 0 else predict(model, x, rows)
    assert S.shape == (n, 10)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--rows", default="4096,1024")
    ap.add_argument("--child", type=int, nargs=2, metavar=("N", "ROWS"))
    args = ap.parse_args()
    if args.child:
        print(child(*args.child))
        return
    rows = [0, *(int(r) for r in args.rows.split(","))]
    mb = {}
    for r in rows:
        out = subprocess.run([sys.executable, __file__, "--child", str(args.n), str(r)],
                             check=True, capture_output=True, text=True).stdout
        mb[r] = int(out.split()[-1])
    print(f"paper CNN, {args.n} CIFAR-10-shaped images, float32, one thread\n")
    print("| predictions | peak memory rise (MB) |\n|---|---|")
    for r in rows:
        print(f"| {'one forward pass' if r == 0 else f'blocks of {r} rows'} | {mb[r]} |")
    r = min(rows[1:])
    print(f"\npeak ratio rows={r}/one pass: {mb[r] / max(mb[0], 1):.3f}")


if __name__ == "__main__":
    main()
