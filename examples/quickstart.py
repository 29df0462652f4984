"""GNvpro on your own model and data, the PyTorch way: an nn.Module whose last layer is an
nn.Linear head, a DataLoader, a fit, a checkpoint, a resumed fit. Imports only torch and gnvpro.

    python examples/quickstart.py [OUT_DIR]

GNvpro eliminates the head: at every step it solves W* of ``fc`` exactly (here least squares,
in closed form) and takes a Gauss-Newton step on the other weights θ with the full
variable-projection Jacobian. There is no learning rate to tune.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gnvpro


class Surrogate(nn.Module):
    """A small residual tanh network: 4 inputs -> 16 features -> 3 outputs (the head ``fc``)."""

    def __init__(self) -> None:
        super().__init__()
        self.lift = nn.Linear(4, 16)
        self.block = nn.Sequential(nn.Linear(16, 16), nn.Tanh())
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.tanh(self.lift(x))
        return self.fc(z + self.block(z))


def data(n: int, generator: torch.Generator) -> TensorDataset:
    """Smooth targets of 4 inputs (a stand-in for a PDE surrogate's parameter-to-output map)."""
    x = torch.rand(n, 4, generator=generator, dtype=torch.float64) * 2 - 1
    y = torch.stack([torch.sin(3 * x[:, 0]) * x[:, 1], torch.exp(-x[:, 2] ** 2) + x[:, 3],
                     x[:, 0] * x[:, 2] - x[:, 1] ** 2], dim=1)
    return TensorDataset(x, y)


def main(out: Path) -> float:
    g = torch.Generator().manual_seed(0)
    train, val = data(2000, g), data(500, g)
    loader = DataLoader(train, batch_size=500, shuffle=True, generator=g)  # 4 sub-batches
    torch.manual_seed(0)
    model = Surrogate().double()
    opt = gnvpro.GNvpro(model, loss="least_squares", head="fc", alpha_w=1e-8, alpha_theta=1e-8)

    # 3 epochs over the shuffled loader, 2 Gauss-Newton steps per sub-batch
    hist = gnvpro.fit(opt, loader, epochs=3, steps_per_batch=2, val=val.tensors)
    print(f"after 3 epochs: train loss {hist.records[-1].loss:.3e}, "
          f"work units {hist.work:.0f}, {hist.termination.name}")
    gnvpro.save_checkpoint(out / "quickstart.pt", model, opt)

    # later, or in another process: the same model class, a fresh optimiser, the checkpoint
    model2 = Surrogate().double()
    opt2 = gnvpro.GNvpro(model2, loss="least_squares", head="fc", alpha_w=1e-8,
                         alpha_theta=1e-8)
    gnvpro.load_checkpoint(out / "quickstart.pt", model2, opt2)
    x, y = train.tensors
    hist2 = gnvpro.fit(opt2, [(x, y)], max_iter=20, val=val.tensors)  # full batch to finish
    xv, yv = val.tensors
    with torch.no_grad():
        rel = float((model2(xv) - yv).norm() / yv.norm())
    print(f"after 20 full-batch steps: train loss {hist2.records[-1].loss:.3e}, "
          f"validation relative error {rel:.2e}")
    return rel


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp))
