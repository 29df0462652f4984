"""The paper's CIFAR-10 convolutional feature extractor (docs/method.md section 6).

    z = GAP(ReLU(conv5×5_{32→64}(AvgPool2×2(ReLU(conv5×5_{C→32}(x))))))  ∈ R^64

followed by an affine head W ∈ R^{classes×65}.  Convolutions use zero padding 2 ("same" size;
the reference Meganet.m convolutions keep the image size).  He-normal init N(0, 2/fan_in),
fan_in = C_in·5·5, zero biases.  Input (n, C, H, W), features (n, 64).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["PaperCNN", "paper_cnn"]


def _he_normal_(w: Tensor, fan_in: int, generator: torch.Generator | None) -> None:
    with torch.no_grad():
        draw = torch.randn(w.shape, generator=generator, dtype=w.dtype, device="cpu")
        w.copy_(draw.to(w.device) * math.sqrt(2.0 / fan_in))


class PaperCNN(nn.Module):
    """conv 5×5 C→32 + ReLU, 2×2 average pool, conv 5×5 32→64 + ReLU, global average pool."""

    n_features = 64

    def __init__(
        self,
        in_channels: int = 3,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        fk = {"dtype": dtype, "device": device}
        self.in_channels = int(in_channels)
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=5, padding=2, **fk)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2, **fk)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """He-normal weights N(0, 2/fan_in), zero biases."""
        for conv in (self.conv1, self.conv2):
            _he_normal_(conv.weight, conv.in_channels * 25, generator)
            with torch.no_grad():
                conv.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        """Features (n, 64) of images x (n, C, H, W)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"PaperCNN expects input (n, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        z = torch.relu(self.conv1(x))
        z = nn.functional.avg_pool2d(z, 2)
        z = torch.relu(self.conv2(z))
        return z.mean(dim=(-2, -1))


def paper_cnn(
    in_channels: int = 3,
    n_classes: int = 10,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    *,
    device: torch.device | str | None = None,
) -> nn.Sequential:
    """``nn.Sequential(PaperCNN(in_channels), nn.Linear(64, n_classes))``; head initialised to
    zero (it is solved by variable projection)."""
    feats = PaperCNN(in_channels, generator=generator, dtype=dtype, device=device)
    head = nn.Linear(PaperCNN.n_features, n_classes, dtype=dtype, device=device)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    return nn.Sequential(feats, head)
