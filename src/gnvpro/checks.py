"""Derivative checks (docs/method.md §7), public so users can check their own models.

taylor_test:  E0(h) = |f(x + h v) − f(x)| = O(h),  E1(h) = |f(x + h v) − f(x) − h J v| = O(h²);
              returns the observed orders log2(E1(h)/E1(h/2)).
adjoint_test: |⟨J v, u⟩ − ⟨v, Jᵀ u⟩| / |⟨J v, u⟩| (should be ~1e-14 in float64).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TaylorResult:
    steps: list[float]
    e0: list[float]
    e1: list[float]

    @property
    def orders(self) -> list[float]:
        """Observed orders of E1 between consecutive halvings."""
        return [
            math.log2(a / b) if a > 0 and b > 0 else float("nan")
            for a, b in zip(self.e1, self.e1[1:], strict=False)
        ]

    def best_order(self) -> float:
        """The largest order over the steps (round-off spoils the smallest steps)."""
        finite = [o for o in self.orders if math.isfinite(o)]
        return max(finite) if finite else float("nan")


def taylor_test(
    f: Callable[[Tensor], Tensor],
    x: Tensor,
    v: Tensor,
    jvp: Tensor,
    h0: float = 1.0,
    n: int = 10,
) -> TaylorResult:
    """Taylor test of f (tensor-valued) at x along v with directional derivative jvp = J v."""
    fx = f(x)
    steps, e0, e1 = [], [], []
    h = h0
    for _ in range(n):
        fh = f(x + h * v)
        e0.append(float((fh - fx).norm()))
        e1.append(float((fh - fx - h * jvp).norm()))
        steps.append(h)
        h /= 2
    return TaylorResult(steps, e0, e1)


def adjoint_test(
    J: Callable[[Tensor], Tensor],
    Jt: Callable[[Tensor], Tensor],
    v: Tensor,
    u: Tensor,
) -> float:
    """Relative adjoint mismatch |⟨J v, u⟩ − ⟨v, Jᵀ u⟩| / max(|⟨J v, u⟩|, tiny)."""
    a = torch.sum(J(v) * u)
    b = torch.sum(v * Jt(u))
    return float((a - b).abs() / a.abs().clamp_min(1e-300))
