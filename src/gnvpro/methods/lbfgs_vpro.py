"""L-BFGS-VarPro: L-BFGS on the reduced objective Φ_red(θ) = Φ(θ, W*(θ)) (docs/method.md §5).

    d_k = −H_k ∇Φ_red(θ_k)     (two-loop recursion, memory m, H_k⁰ = γ_k I,
                                 γ_k = s_{k−1}ᵀy_{k−1} / y_{k−1}ᵀy_{k−1})
    θ_{k+1} = θ_k + α_k d_k,    α_k: strong Wolfe (c1 = 1e-4, c2 = 0.9), first trial 1, or
                                 min(1, 1/‖g‖₁) without pairs (as torch.optim.LBFGS)

The line search is Nocedal & Wright Alg. 3.5 + 3.6 (gnvpro.linalg.line_search). Every inner
solve W*(θ) is warm-started from the current iterate's W. Work units as gnvpro.solver counts
them: each line-search value 1, each gradient there 1 (only where Armijo holds). A failed line
search drops the pairs (the next direction is −g), or stops when there were none. The curvature
pairs are dropped at a new batch (pairs of another batch's Φ_red are not secant pairs here;
``carry=("pairs",)`` keeps them). The same data in new tensors is not a new batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..descent import LBFGSTwoLoop
from ..search import StrongWolfe
from ..solver import SolverConfig
from ..validate import in_range
from .base import InnerSettings
from .varpro_optimizer import VarProOptimizer

__all__ = ["LBFGSVarPro", "LBFGSVarProConfig"]


@dataclass(frozen=True)
class LBFGSVarProConfig(SolverConfig, InnerSettings):
    """Settings of L-BFGS-VarPro besides the model, the loss and α: the descent (the two-loop
    recursion and its memory), the strong Wolfe search, the gradient tolerances and the inner
    solve's."""

    descent: LBFGSTwoLoop = field(default_factory=LBFGSTwoLoop)
    search: StrongWolfe = field(default_factory=StrongWolfe)
    # torch intra-op threads in step(); None: gnvpro.threads.auto
    threads: int | None = field(default=None, metadata=in_range(low=1))


class LBFGSVarPro(VarProOptimizer):
    """L-BFGS with a strong Wolfe line search on the reduced objective Φ_red(θ) = Φ(θ, W*(θ)).

    Parameters
    ----------
    model : nn.Module
        The network; its head is the last nn.Linear of an nn.Sequential or ``head``.
    loss : {"least_squares", "cross_entropy", "logistic"} or gnvpro.losses.Loss
    alpha_w, alpha_theta : float
        Ridge weights α_W ≥ 0 (> 0 for classification) and α_θ ≥ 0.
    head : str, optional
        Dotted name of the head nn.Linear.
    config : LBFGSVarProConfig, optional
        The descent (``LBFGSTwoLoop(memory)``), the search (``StrongWolfe``), the gradient
        tolerances and the inner solve's settings.
    regularizer : LinearMap, optional
        B in (α_θ/2)‖Bθ‖².
    carry : iterable of {"radius", "pairs"}, optional
        What a new batch inherits (default (): curvature pairs of another batch's Φ_red are not
        secant pairs of this one).
    reducer : SampleReducer, optional
        How row sums become averages (a DistributedReducer: this process's rows are its shard).

    Notes
    -----
    d_k = −M_k ∇Φ_red(θ_k), M_k the L-BFGS inverse of the last m pairs (s, y = Δ∇Φ_red), and
    θ_{k+1} = θ_k + α_k d_k with α_k satisfying the strong Wolfe conditions; W*(θ) is solved
    at every trial point, warm-started. It is GNvpro with ``descent=LBFGSTwoLoop()``: no
    Gauss-Newton products, so each iteration costs only values and gradients.

    References
    ----------
    J. Nocedal, S. Wright, Numerical Optimization, 2nd ed., Springer (2006), Alg. 7.4, 3.5, 3.6;
    E. Newman et al., "Train Like a (Var)Pro", SIAM J. Math. Data Sci. 3 (2021) (L-BFGS-VarPro
    as a baseline).
    """

    config_type = LBFGSVarProConfig
