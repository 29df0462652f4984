"""L-BFGS-VarPro: L-BFGS on the reduced objective Φ_red(θ) = Φ(θ, W*(θ)) (docs/method.md §5).

    d_k = −H_k ∇Φ_red(θ_k)     (two-loop recursion, memory m, H_k⁰ = γ_k I,
                                 γ_k = s_{k−1}ᵀy_{k−1} / y_{k−1}ᵀy_{k−1})
    θ_{k+1} = θ_k + α_k d_k,    α_k: strong Wolfe (c1 = 1e-4, c2 = 0.9), first trial 1, or
                                 min(1, 1/‖g‖₁) without pairs (as torch.optim.LBFGS)

The line search is Nocedal & Wright Alg. 3.5 + 3.6 (gnvpro.linalg.line_search). Every inner
solve W*(θ) is warm-started from the current iterate's W. Work units as gnvpro.solver counts
them: each line-search value 1, each gradient there 1 (only where Armijo holds). The curvature
pairs are dropped at a new batch (pairs of another batch's Φ_red are not secant pairs here;
``carry=("pairs",)`` keeps them). The same data in new tensors is not a new batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..solver import SolverState, StepInfo, lbfgs_step
from ..validate import in_range
from .base import InnerSettings
from .varpro_optimizer import VarProOptimizer

__all__ = ["LBFGSVarPro", "LBFGSVarProConfig"]


@dataclass(frozen=True)
class LBFGSVarProConfig(InnerSettings):
    """Settings of L-BFGS-VarPro besides the model, the loss and α (and the inner solve's)."""

    memory: int = 10  # curvature pairs
    max_line_search: int = field(default=25, metadata=in_range(low=1))  # evaluations per search
    grad_rtol: float = field(default=1e-10, metadata=in_range(low=0.0))
    grad_atol: float = field(default=0.0, metadata=in_range(low=0.0))
    # torch intra-op threads in step(); None: gnvpro.threads.auto
    threads: int | None = field(default=None, metadata=in_range(low=1))


class LBFGSVarPro(VarProOptimizer):
    """L-BFGS with a strong Wolfe line search on Φ_red (the model holds θ and W*(θ)); on a new
    batch the counters carry over, the curvature pairs do not (``carry``)."""

    config_type = LBFGSVarProConfig

    def _outer_step(self, state: SolverState) -> tuple[SolverState, StepInfo | None]:
        return lbfgs_step(self.problem, state, self.config.memory, self.config.max_line_search)
