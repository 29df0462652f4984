"""GNvpro: Gauss-Newton on the reduced objective Φ_red(θ) = Φ(θ, W*(θ)) (method.md §2-3).

    opt = GNvpro(model, loss="least_squares", alpha_w=1e-10, alpha_theta=1e-10)
    rec = opt.step(x, y)                     # one outer iteration
    hist = opt.run(x, y, max_work=200, val=(xv, yv))

The outer solver is truncated Gauss-Newton with a line search (default) or the paper's trust
region (``GNvproConfig.trust_region()``), both in gnvpro.solver; what all variable-projection
optimisers share is in methods/varpro_optimizer.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from ..solver import (
    SolverConfig,
    SolverState,
    StepInfo,
    Termination,
    check_termination,
    trust_region_step,
)
from ..trust_region import RadiusRule
from ..validate import validate_config
from ..varpro import InnerOptions
from .varpro_optimizer import VarProOptimizer

__all__ = ["GNvpro", "GNvproConfig"]


@dataclass(frozen=True)
class GNvproConfig:
    """All settings of GNvpro besides the model, the loss and α.

    The defaults are the fastest variant measured (docs/results.md, "wall time"): truncated
    Gauss-Newton, ≤ 10 CG products on H_GN d = −∇Φ_red preconditioned by L-BFGS(10) from the
    accepted steps, strong Wolfe line search. ``GNvproConfig.trust_region()`` gives the paper's
    (and the reference code's) trust region: Lanczos, ≤ 20 vectors, tolerance 1e-2.
    """

    max_krylov: int = 10  # products per outer iteration (CG for "tn", Lanczos vectors for TR)
    krylov_rtol: float = 1e-2
    subproblem: str = "tn"  # or "lanczos" (the paper's trust region), "steihaug" (solver.py)
    jacobian: str = "full"  # or "kaufman" (drops dW*/dθ; ablation)
    gn_alpha_w: bool = True  # include α_W J_Wᵀ J_W in H_GN (the least-squares GN matrix)
    grad_rtol: float = 1e-10
    grad_atol: float = 0.0
    inner_rtol: float = 1e-10
    inner_atol: float = 1e-10
    inner_max_iter: int = 100
    jvp_mode: str = "auto"  # "double-backward", "jvp" or "linearize" (gnvpro.autodiff)
    radius_rule: RadiusRule = field(default_factory=RadiusRule)
    min_radius: float = 1e-14
    tn_memory: int = 10  # subproblem "tn": L-BFGS pairs in the CG preconditioner
    max_line_search: int = 25  # subproblem "tn": evaluations per line search
    extrapolate: bool = False  # trust region: also try 2s after a very successful step
    threads: int | None = None  # torch intra-op threads in step(); None: gnvpro.threads.auto

    def __post_init__(self) -> None:
        validate_config(self)  # every field, by its type and range (TypeError / ValueError)

    @classmethod
    def trust_region(cls, **changes: object) -> GNvproConfig:
        """The paper's trust-region GNvpro (Lanczos, ≤ 20 vectors, tolerance 1e-2)."""
        return cls(**{"subproblem": "lanczos", "max_krylov": 20, "krylov_rtol": 1e-2, **changes})

    def solver(self) -> SolverConfig:
        """The outer solver's settings (the fields both configs share)."""
        return SolverConfig(**{f.name: getattr(self, f.name) for f in fields(SolverConfig)})

    def to_dict(self) -> dict:
        return asdict(self)



class GNvpro(VarProOptimizer):
    """Gauss-Newton variable projection for a model whose last layer is affine."""

    config_type = GNvproConfig

    @property
    def solver_config(self) -> SolverConfig:
        return self.config.solver()

    def _objective_options(self) -> dict:
        c = self.config
        return {"jacobian": c.jacobian, "gn_alpha_w": c.gn_alpha_w, "jvp_mode": c.jvp_mode,
                "inner": InnerOptions(c.inner_rtol, c.inner_atol, c.inner_max_iter)}

    def _outer_step(self, state: SolverState) -> tuple[SolverState, StepInfo]:
        assert self.objective is not None
        return trust_region_step(self.objective, state, self.solver_config)

    def _termination(self, state: SolverState) -> Termination:
        return check_termination(state, self.solver_config, None, None)

    def _carry(self, old: SolverState, fresh: SolverState) -> SolverState:
        """A new batch: the trust-region radius carries over with the counters."""
        return replace(super()._carry(old, fresh), radius=old.radius)
