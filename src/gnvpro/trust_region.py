"""Trust-region ratio test and radius rules (reference: Meganet.m optimization/trnewton.m).

ρ = ared / pred, ared = Φ(θ) − Φ(θ + s), pred = −gᵀs − ½ sᵀ H s.

    ρ < η_reject                     reject,  Δ ← min(½Δ, ½‖s‖), re-solve in the same basis
    η_reject ≤ ρ < η_shrink          accept,  Δ ← ½Δ
    η_shrink ≤ ρ ≤ η_expand          accept,  Δ unchanged
    ρ > η_expand, ‖s‖ = Δ, Δ ≤ κ‖g‖  accept,  Δ ← 1.5Δ   (the reference re-tests the same step
                                              first, one wasted evaluation; we accept at once)
    otherwise                        accept,  Δ unchanged
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from .validate import in_range

_UNIT = in_range(low=0.0, high=1.0, high_inclusive=False)  # η ∈ [0, 1)


class StepOutcome(str, Enum):
    REJECTED = "rejected"
    ACCEPTED_SHRINK = "accepted, radius halved"
    ACCEPTED = "accepted"
    ACCEPTED_EXPAND = "accepted, radius expanded"


@dataclass(frozen=True)
class RadiusRule:
    eta_reject: float = field(default=1e-4, metadata=_UNIT)
    eta_shrink: float = field(default=0.1, metadata=_UNIT)
    eta_expand: float = field(default=0.75, metadata=_UNIT)
    shrink: float = field(default=0.5, metadata=in_range(low=0.0, low_inclusive=False, high=1.0,
                                                          high_inclusive=False))
    expand: float = field(default=1.5, metadata=in_range(low=1.0))
    max_radius_per_grad: float = field(default=1e4, metadata=in_range(low=0.0,
                                                                      low_inclusive=False))

    def update(
        self, rho: float, radius: float, step_norm: float, on_boundary: bool, grad_norm: float
    ) -> tuple[StepOutcome, float]:
        """(outcome, new radius) for ratio ρ; a NaN ρ (non-finite trial) rejects."""
        if not rho >= self.eta_reject:  # also catches NaN
            return StepOutcome.REJECTED, min(self.shrink * radius, self.shrink * step_norm)
        if rho < self.eta_shrink:
            return StepOutcome.ACCEPTED_SHRINK, self.shrink * radius
        if rho <= self.eta_expand:
            return StepOutcome.ACCEPTED, radius
        if on_boundary and radius <= self.max_radius_per_grad * grad_norm:
            return StepOutcome.ACCEPTED_EXPAND, self.expand * radius
        return StepOutcome.ACCEPTED, radius
