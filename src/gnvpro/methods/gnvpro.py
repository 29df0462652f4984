"""GNvpro: Gauss-Newton on the reduced objective Φ_red(θ) = Φ(θ, W*(θ)) (method.md §2-3).

    opt = GNvpro(model, loss="least_squares", alpha_w=1e-10, alpha_theta=1e-10)
    rec = opt.step(x, y)                     # one outer iteration
    hist = opt.run(x, y, max_work=200, val=(xv, yv))

The outer solver is truncated Gauss-Newton with a line search (default) or the paper's trust
region (``GNvproConfig.trust_region()``), both in gnvpro.solver; what all variable-projection
optimisers share is in methods/varpro_optimizer.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..solver import SolverConfig, SolverState, StepInfo, trust_region_step
from .base import InnerSettings
from .varpro_optimizer import VarProOptimizer

__all__ = ["GNvpro", "GNvproConfig"]


@dataclass(frozen=True)
class GNvproConfig(SolverConfig, InnerSettings):
    """All settings of GNvpro besides the model, the loss and α: the outer solver's
    (SolverConfig: Krylov products, trust region or line search), the inner solve's, and these.

    The defaults are the fastest variant measured (docs/results.md, "wall time"): truncated
    Gauss-Newton, ≤ 10 CG products on H_GN d = −∇Φ_red preconditioned by L-BFGS(10) from the
    accepted steps, strong Wolfe line search. ``GNvproConfig.trust_region()`` gives the paper's
    (and the reference code's) trust region: Lanczos, ≤ 20 vectors, tolerance 1e-2.
    """

    max_krylov: int = 10  # products per outer iteration (CG for "tn", Lanczos vectors for TR)
    subproblem: str = "tn"  # or "lanczos" (the paper's trust region), "steihaug" (solver.py)
    jacobian: str = "full"  # or "kaufman" (drops dW*/dθ; ablation)
    gn_alpha_w: bool = True  # include α_W J_Wᵀ J_W in H_GN (the least-squares GN matrix)
    jvp_mode: str = "auto"  # "double-backward", "jvp" or "linearize" (gnvpro.autodiff)
    threads: int | None = None  # torch intra-op threads in step(); None: gnvpro.threads.auto

    @classmethod
    def trust_region(cls, **changes: object) -> GNvproConfig:
        """The paper's trust-region GNvpro (Lanczos, ≤ 20 vectors, tolerance 1e-2)."""
        return cls(**{"subproblem": "lanczos", "max_krylov": 20, "krylov_rtol": 1e-2, **changes})


class GNvpro(VarProOptimizer):
    """Gauss-Newton variable projection for a model whose last layer is affine. ``carry``
    (constructor, default ("radius",)): what a new batch inherits (methods/solver_method.py)."""

    config_type = GNvproConfig
    default_carry = ("radius",)  # the paper's stochastic scheme (methods/solver_method.py)

    def _objective_options(self) -> dict:
        c = self.config
        return {"jacobian": c.jacobian, "gn_alpha_w": c.gn_alpha_w, "jvp_mode": c.jvp_mode,
                "inner": c.inner()}

    def _outer_step(self, state: SolverState) -> tuple[SolverState, StepInfo]:
        return trust_region_step(self.problem, state, self.config)

