"""L-BFGS-VarPro: L-BFGS on the reduced objective Φ_red(θ) = Φ(θ, W*(θ)) (method.md §5).

    d_k = −H_k ∇Φ_red(θ_k)     (two-loop recursion, memory m, H_k⁰ = γ_k I,
                                 γ_k = s_{k−1}ᵀy_{k−1} / y_{k−1}ᵀy_{k−1})
    θ_{k+1} = θ_k + α_k d_k,    α_k: strong Wolfe (c1 = 1e-4, c2 = 0.9), first trial 1, or
                                 min(1, 1/‖g‖₁) without pairs (as torch.optim.LBFGS)

The line search is Nocedal & Wright Alg. 3.5 + 3.6 (gnvpro.linalg.line_search). Every inner
solve W*(θ) is warm-started from the current iterate's W. Work units as gnvpro.solver counts
them: each line-search value 1, each gradient there 1 (only where Armijo holds). The curvature
pairs are dropped at a new batch (pairs of another batch's Φ_red are not secant pairs here).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..solver import (
    SolverConfig,
    SolverState,
    StepInfo,
    Termination,
    check_termination,
    lbfgs_step,
)
from ..validate import validate_config
from ..varpro import InnerOptions
from .varpro_optimizer import VarProOptimizer

__all__ = ["LBFGSVarPro", "LBFGSVarProConfig"]


@dataclass(frozen=True)
class LBFGSVarProConfig:
    """Settings of L-BFGS-VarPro besides the model, the loss and α."""

    memory: int = 10  # curvature pairs
    max_line_search: int = 25  # evaluations per line search
    grad_rtol: float = 1e-10
    grad_atol: float = 0.0
    inner_rtol: float = 1e-10
    inner_atol: float = 1e-10
    inner_max_iter: int = 100
    threads: int | None = None  # torch intra-op threads in step(); None: gnvpro.threads.auto

    def __post_init__(self) -> None:
        validate_config(self)

    def to_dict(self) -> dict:
        return asdict(self)


class LBFGSVarPro(VarProOptimizer):
    """L-BFGS with a strong Wolfe line search on Φ_red (the model holds θ and W*(θ))."""

    config_type = LBFGSVarProConfig

    def _objective_options(self) -> dict:
        c = self.config
        return {"inner": InnerOptions(c.inner_rtol, c.inner_atol, c.inner_max_iter)}

    def _outer_step(self, state: SolverState) -> tuple[SolverState, StepInfo | None]:
        assert self.objective is not None
        return lbfgs_step(self.objective, state, self.config.memory,
                          self.config.max_line_search)

    def _termination(self, state: SolverState) -> Termination:
        c = self.config
        return check_termination(state, SolverConfig(grad_rtol=c.grad_rtol,
                                                     grad_atol=c.grad_atol), None, None)
