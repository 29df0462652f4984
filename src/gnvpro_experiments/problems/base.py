"""A data set split into train / validation / test, as torch tensors."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class Split:
    """Inputs x_* are (n, ...) float tensors; targets y_* are (n, c) float (regression)
    or (n,) int64 class indices (classification)."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    meta: dict = field(default_factory=dict)

    def sizes(self) -> tuple[int, int, int]:
        return len(self.x_train), len(self.x_val), len(self.x_test)
