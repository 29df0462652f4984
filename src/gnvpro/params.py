"""Flatten a dict of named tensors into one 1-D vector θ, and back."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and offsets of the tensors stacked in a flat vector θ (in this order)."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def of(cls, named: dict[str, Tensor]) -> ParamLayout:
        return cls(tuple(named), tuple(t.shape for t in named.values()))

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def flatten(self, named: dict[str, Tensor], dtype: torch.dtype | None = None) -> Tensor:
        """θ = [vec(t_1); vec(t_2); …] (row-major vec, torch order)."""
        parts = [named[k].reshape(-1) for k in self.names]
        flat = torch.cat(parts) if parts else torch.zeros(0)
        return flat if dtype is None else flat.to(dtype)

    def unflatten(self, flat: Tensor, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """Inverse of flatten: views of `flat` (cast to dtype first if given)."""
        if flat.ndim != 1 or flat.numel() != self.size:
            raise ValueError(
                f"expected a flat vector of {self.size} entries, got {tuple(flat.shape)}"
            )
        if dtype is not None:
            flat = flat.to(dtype)
        out, i = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            k = math.prod(shape)
            out[name] = flat[i : i + k].reshape(shape)
            i += k
        return out
