"""Write tests/data/iterates.json: GNvpro iterates with the paper's settings, for regression tests.

Run with the code whose iterates are to be kept (PYTHONPATH=src python tests/data/make_...):
  * CDR, the reference θ0 and split, least squares, one level of 200 WU (the paper's trust
    region: Lanczos, ≤ 20 vectors, tolerance 1e-2);
  * a tiny logistic problem (ellipse-like, seeded), 15 iterations (the general product path).
Each entry: per-iteration loss, grad_norm, radius, work_units, and the final flat θ.
"""

import json
import sys
from pathlib import Path

import torch

from gnvpro import GNvpro, GNvproConfig, LanczosSubspace
from gnvpro_experiments.problems.cdr import (
    load_cdr_mat,
    load_reference,
    reference_network,
    reference_split,
)


def history(opt, x, y, **budget):
    hist = opt.run(x, y, **budget)
    return {
        "loss": [r.loss for r in hist.records],
        "grad_norm": [r.grad_norm for r in hist.records],
        "radius": [r.radius for r in hist.records],
        "work_units": [r.work_units for r in hist.records],
        "theta": opt.theta().tolist(),
    }


def cdr():
    ref = load_reference()
    sp = reference_split(ref, *load_cdr_mat())
    opt = GNvpro(reference_network(ref), alpha_w=1e-10, alpha_theta=1e-10,
                 config=GNvproConfig.trust_region())
    return history(opt, sp.x_train, sp.y_train, max_work=200)


def logistic():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2, generator=g, dtype=torch.float64)
    y = ((x[:, 0] / 2) ** 2 + x[:, 1] ** 2 < 1).to(torch.float64)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8),
                              torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    opt = GNvpro(net, loss="logistic", alpha_w=1e-8, alpha_theta=1e-6,
                 config=GNvproConfig.trust_region(
                     descent=LanczosSubspace(max_products=10, rtol=1e-3)))
    return history(opt, x, y, max_iter=15)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("iterates.json"))
    torch.set_num_threads(1)
    out.write_text(json.dumps({"cdr": cdr(), "logistic": logistic()}) + "\n")
    print(f"wrote {out}")
