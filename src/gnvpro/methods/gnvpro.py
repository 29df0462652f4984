"""GNvpro: Gauss-Newton on the reduced objective Φ_red(θ) = Φ(θ, W*(θ)) (docs/method.md §2-3).

    opt = GNvpro(model, loss="least_squares", alpha_w=1e-10, alpha_theta=1e-10)
    rec = opt.step(x, y)                     # one outer iteration
    hist = opt.run(x, y, max_work=200, val=(xv, yv))

The outer solver is a descent combined with a search (gnvpro.solver): truncated Gauss-Newton or
the L-BFGS direction, whichever pays, with a line search (default), truncated Gauss-Newton alone
(``GNvproConfig.truncated_gauss_newton()``) or the paper's trust region
(``GNvproConfig.trust_region()``);
what all variable-projection optimisers share is in methods/varpro_optimizer.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..autodiff import JVP_MODES
from ..descent import Hybrid
from ..search import StrongWolfe
from ..solver import (
    LEGACY_KEYS,
    Descent,
    Search,
    SolverConfig,
    paper_trust_region,
    truncated_gauss_newton,
    upgrade_settings,
)
from ..validate import choices, in_range
from ..varpro import JACOBIANS
from .base import InnerSettings
from .varpro_optimizer import VarProOptimizer

# the fields a Hybrid dict had before cg_price (GNvproConfig.upgrade)
EARLIER_HYBRID = {"kind", "max_products", "rtol", "memory", "probe_after", "max_gap",
                  "probe_share", "start"}

__all__ = ["GNvpro", "GNvproConfig"]


@dataclass(frozen=True)
class GNvproConfig(SolverConfig, InnerSettings):
    """All settings of GNvpro besides the model, the loss and α: the outer solver's
    (SolverConfig: a descent, a search, gradient tolerances), the inner solve's, and these.

    The defaults are ``Hybrid()`` with ``StrongWolfe()`` and inexact inner solves
    (``inner_forcing=1e-2``): truncated Gauss-Newton (≤ 10 CG products on H_GN d = −∇Φ_red
    preconditioned by L-BFGS(10) from the accepted steps) or the L-BFGS direction, whichever
    lowered Φ more per unit of cost lately (work units, a truncated-GN unit priced at 2/3 of
    an L-BFGS one; truncated GN first for least squares, the L-BFGS direction first where W*
    takes Newton's method, each probing the other after 2 iterations); the choices follow Φ
    and the work counts, so a run repeats bit for bit. On the peer benchmark (docs/results.md,
    "Pricing the hybrid's units") it is at or below the best of torch.optim.LBFGS, Adam, scipy
    least_squares and pytorch-minimize in 18 of 21 (problem, budget) cells (truncated GN
    alone: 13; wine's three by a lower local minimum on one seed) and first to the target on
    two of the three cross-entropy problems (synth20: torch.optim.LBFGS, by 0.27 s of 3.5 s);
    on Indian Pines it reaches the validation target as fast as truncated GN alone (7.76 s
    against 7.84 s). ``GNvproConfig.truncated_gauss_newton()`` is truncated GN alone
    with W* exact (the default of earlier versions; the experiments' ``gnvpro-tn``).
    ``GNvproConfig.trust_region()`` gives the paper's (and the reference code's) trust region:
    ``LanczosSubspace()`` (≤ 20 vectors, tolerance 1e-2) and ``TrustRegion()``, W* exact; it
    wins on DCR.
    """

    descent: Descent = field(default_factory=Hybrid)
    search: Search = field(default_factory=StrongWolfe)
    # inexact inner solves (InnerSettings): ‖∇_W Φ‖ ≤ 1e-2·min(‖∇Φ_red‖, α_W‖W0‖) as well
    inner_forcing: float = field(default=1e-2, metadata=in_range(low=0.0))
    jacobian: str = field(default="full", metadata=choices(*JACOBIANS))  # "kaufman": no dW*/dθ
    gn_alpha_w: bool = True  # include α_W J_Wᵀ J_W in H_GN (the least-squares GN matrix)
    jvp_mode: str = field(default="auto", metadata=choices(*JVP_MODES))  # gnvpro.autodiff
    # torch intra-op threads in step(); None: gnvpro.threads.auto
    threads: int | None = field(default=None, metadata=in_range(low=1))

    @classmethod
    def upgrade(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        """A settings dict of an earlier version in today's form: flat solver keys as
        ``descent`` / ``search`` (gnvpro.solver.upgrade_settings; without ``subproblem`` they
        meant truncated GN, the default then), exact inner solves (inner_forcing = 0) where
        the dict predates ``inner_forcing`` (flat keys, or ``inner_rtol`` without it), and
        alike-priced units (cg_price = 1) for a Hybrid dict with every other field and no
        ``cg_price`` (an earlier version's to_dict; a partial dict gets today's default; a
        first probe still to come follows today's rule, after ``probe_after`` iterations)."""
        if not isinstance(d, Mapping):
            return d
        d = dict(d)
        if "inner_forcing" not in d and ("inner_rtol" in d or set(d) & LEGACY_KEYS):
            d["inner_forcing"] = 0.0
        d = upgrade_settings(d, cls.truncated_gauss_newton())
        descent = d.get("descent")
        if (isinstance(descent, Mapping) and descent.get("kind") == "hybrid"
                and "cg_price" not in descent and EARLIER_HYBRID <= set(descent)):
            d["descent"] = {**descent, "cg_price": 1.0}
        return d

    @classmethod
    def truncated_gauss_newton(cls, **changes: object) -> GNvproConfig:
        """Truncated Gauss-Newton alone (≤ 10 CG products, L-BFGS(10) preconditioner, strong
        Wolfe), W* exact: the default of earlier versions."""
        return cls(**{**truncated_gauss_newton(), "inner_forcing": 0.0, **changes})

    @classmethod
    def trust_region(cls, **changes: object) -> GNvproConfig:
        """The paper's trust-region GNvpro (Lanczos, ≤ 20 vectors, tolerance 1e-2, W* exact)."""
        return cls(**{**paper_trust_region(), "inner_forcing": 0.0, **changes})


class GNvpro(VarProOptimizer):
    """Gauss-Newton variable projection for a model whose last layer is affine.

    Minimises Φ(θ, W) = L(Ẑ(θ) Wᵀ, C) + (α_W/2)‖W‖² + (α_θ/2)‖Bθ‖² by eliminating the head:
    W*(θ) = argmin_W Φ(θ, W) at every θ, and Gauss-Newton steps on Φ_red(θ) = Φ(θ, W*(θ)).

    Parameters
    ----------
    model : nn.Module
        The network; its head is the last nn.Linear of an nn.Sequential or ``head``.
    loss : {"least_squares", "cross_entropy", "logistic"} or gnvpro.losses.Loss
        L = 1/(2n) Σ‖s_i − c_i‖², mean softmax cross-entropy, or mean binary logistic loss.
    alpha_w, alpha_theta : float
        Ridge weights α_W ≥ 0 (> 0 for classification) and α_θ ≥ 0.
    head : str, optional
        Dotted name of the head nn.Linear (default: the Sequential's last module).
    config : GNvproConfig, optional
        Outer and inner solver settings (default: ``GNvproConfig()``, the Hybrid descent).
    regularizer : LinearMap, optional
        B in (α_θ/2)‖Bθ‖² (default: the identity).
    carry : iterable of {"radius", "pairs"}, optional
        What a new batch inherits (default ("radius",): the paper's sub-batch scheme).

    Returns
    -------
    ``step(x, y)`` returns the iteration's StepInfo (objective, gradient norm, step, work
    units); ``gnvpro.fit(opt, batches, ...)`` returns a History. The model holds the accepted
    θ and the solved W*, b after every step.

    Notes
    -----
    ∇Φ_red = J_Zᵀ(G W̃) + α_θ BᵀBθ (W* drops out); H_GN = J_Sᵀ H_S J_S + α_W J_Wᵀ J_W + α_θ BᵀB
    with the full Jacobian J_S dθ = dẐ Wᵀ + Ẑ dWᵀ, dW = −H_W⁻¹ B_Z[dZ] (implicit function
    theorem; gnvpro.varpro). The inner solve is in float64: closed form for least squares,
    Newton otherwise, at trial points to ‖∇_W Φ‖ ≤ inner_forcing·min(‖∇Φ_red‖, α_W‖W0‖), W0
    the warm start (default 1e-2; 0: to a relative gradient of 1e-10, as the paper).

    References
    ----------
    E. Newman, L. Ruthotto, J. Hart, B. van Bloemen Waanders, "Train Like a (Var)Pro: Efficient
    Training of Neural Networks with Variable Projection", SIAM J. Math. Data Sci. 3 (2021);
    G. Golub, V. Pereyra, "The differentiation of pseudo-inverses and nonlinear least squares
    problems whose variables separate", SIAM J. Numer. Anal. 10 (1973). docs/method.md.
    """

    config_type = GNvproConfig
    default_carry = ("radius",)  # the paper's stochastic scheme (methods/solver_method.py)

    def _objective_options(self) -> dict:
        c = self.config
        return {"jacobian": c.jacobian, "gn_alpha_w": c.gn_alpha_w, "jvp_mode": c.jvp_mode,
                "inner": c.inner(), "chunks": c.chunks, "memory": c.chunk_memory}

