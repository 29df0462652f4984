"""Inner solvers W*(θ) = argmin_W L(Ẑ Wᵀ, C)/n + (α_W/2)‖W‖_F² (rows are samples).

Every solver takes the SampleReducer that averages its sums over samples (n = reducer.n).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from gnvpro.inner.base import InnerSolution
from gnvpro.inner.least_squares import solve_least_squares
from gnvpro.inner.newton import dense_hessian, hessian_apply, solve_newton
from gnvpro.losses import Loss
from gnvpro.reduce import SampleReducer

__all__ = [
    "InnerSolution",
    "solve_least_squares",
    "solve_newton",
    "solve_inner",
    "hessian_apply",
    "dense_hessian",
]


def solve_inner(
    loss: Loss,
    Zh: Tensor,
    C: Tensor,
    alpha_w: float,
    reducer: SampleReducer,
    W0: Tensor | None = None,
    finite: bool = False,
    factor0: Callable[[], Tensor] | None = None,
    **newton_options: float | int,
) -> InnerSolution:
    """W* for any loss: the closed form for quadratic losses (W0, factor0 and options are then
    unused), Newton's method (``solve_newton``, warm-started from W0, preconditioned by the
    Cholesky factor factor0() of a nearby H_W) otherwise. finite=True: Ẑ and C are known to be
    finite (not scanned again)."""
    if loss.is_quadratic:
        return solve_least_squares(Zh, C, alpha_w, reducer, finite)
    return solve_newton(loss, Zh, C, alpha_w, reducer, W0=W0, finite=finite, factor0=factor0,
                        **newton_options)
