"""Descents: how an outer iteration turns the gradient g and the Gauss-Newton operator H of the
current point into a step. Each is a frozen dataclass of its own settings; a search
(gnvpro.search) calls it.

For a trust region (``trust_step``: a step s with ‖s‖ ≤ Δ and its predicted reduction
pred = −gᵀs − ½ sᵀHs):
    LanczosSubspace   min_z −β₀z₁ + ½ zᵀTz, ‖z‖ ≤ Δ in the Krylov basis V of H for −g
                      (Lanczos, full reorthogonalisation; T = V H Vᵀ; s = Vᵀz); the first radius
                      is the length of the subspace Newton step; a rejected step re-solves in
                      the same basis (the paper's and the reference's trnewton)
    Steihaug          Steihaug-Toint truncated CG; the first radius is the length of the
                      unconstrained truncated CG step
For a line search (``direction``: d with gᵀd < 0 and the first trial step length):
    PreconditionedCG  d ≈ −H⁻¹g by CG preconditioned with the L-BFGS inverse M⁻¹ of the
                      curvature pairs (s, y = Δg) of the accepted steps (truncated Gauss-Newton)
    LBFGSTwoLoop      d = −M⁻¹g (the two-loop recursion; no products with H)
A direction that is not a descent direction in round-off falls back to −M⁻¹g, then to −g with
the pairs dropped. ``max_products`` caps the products with H per iteration (2 work units each),
``rtol`` stops the Krylov iteration at a residual of rtol·‖g‖.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from torch import Tensor

from .linalg import lanczos, newton_step_in_subspace, steihaug_cg, tr_step_in_subspace
from .linalg.cg import pcg
from .linalg.lbfgs import two_loop
from .state import SolverState
from .validate import in_range, validate_config

__all__ = ["DESCENTS", "Direction", "LBFGSTwoLoop", "LanczosSubspace", "PreconditionedCG",
           "Steihaug", "TrustStep"]

_PRODUCTS = in_range(low=1)
_RTOL = in_range(low=0.0, high=1.0, high_inclusive=False)


@dataclass
class TrustStep:
    """A trust-region step: the state (basis, radius and work updated), s, pred = −gᵀs − ½sᵀHs,
    whether ‖s‖ = Δ, the products with H this call made and the Krylov relative residual."""

    state: SolverState
    s: Tensor
    pred: float
    on_boundary: bool
    products: int
    relres: float


@dataclass
class Direction:
    """A line-search direction: d (gᵀd = dg < 0), the pairs it leaves in use (() when it fell
    back to −g), the first trial step length, products with H (2 work units each), relres."""

    d: Tensor
    dg: float
    pairs: tuple
    alpha1: float = 1.0
    products: int = 0
    relres: float = 0.0


def _descending(d: Tensor, g: Tensor, pairs: tuple) -> tuple[Tensor, float, tuple]:
    """d if gᵀd < 0, else −M⁻¹g if that descends, else −g (pairs dropped)."""
    dg = float(g @ d)
    if dg < 0:
        return d, dg, pairs
    d = -two_loop(g, pairs)
    dg = float(g @ d)
    if dg < 0:
        return d, dg, pairs
    return -g, -float(g @ g), ()


@dataclass(frozen=True)
class LanczosSubspace:
    """The trust-region subproblem solved exactly in a Lanczos basis (the paper's descent).

    Parameters
    ----------
    max_products : int
        Lanczos vectors, each one product with H (default 20, the paper's).
    rtol : float
        Stop when the Lanczos residual of H s = −g is below rtol·‖g‖ (default 1e-2).

    Notes
    -----
    V = [v_1 … v_k] (full reorthogonalisation), T = V H Vᵀ tridiagonal, β₀ = ‖g‖; the step is
    s = Vᵀz with z = argmin −β₀z₁ + ½ zᵀTz, ‖z‖ ≤ Δ (Moré–Sorensen on T), pred = β₀z₁ − ½ zᵀTz.
    A rejected step re-solves in the same basis at the smaller radius (no new products).

    References
    ----------
    N. Gould, S. Lucidi, M. Roma, Ph. Toint, SIAM J. Optim. 9 (1999) 504–525; J. Moré,
    D. Sorensen, SIAM J. Sci. Stat. Comput. 4 (1983) 553–572.
    """

    kind: ClassVar[str] = "lanczos"
    keeps_basis: ClassVar[bool] = True  # a rejected step re-solves in the same basis
    max_products: int = field(default=20, metadata=_PRODUCTS)
    rtol: float = field(default=1e-2, metadata=_RTOL)

    def __post_init__(self) -> None:
        validate_config(self)

    def trust_step(self, problem: Any, state: SolverState) -> TrustStep:
        basis, products = state.basis, 0
        if basis is None:
            basis = lanczos(problem.gn_operator(state.pt), -state.g, self.max_products, self.rtol)
            products = basis.n_products
            state = replace(state, basis=basis, work=state.work + 2 * products)
        radius = state.radius
        if radius is None:
            radius = float(newton_step_in_subspace(basis.T, basis.beta0).norm())
            state = replace(state, radius=radius)
        sol = tr_step_in_subspace(basis.T, basis.beta0, radius)
        return TrustStep(state, basis.expand(sol.z), float(sol.pred), bool(sol.on_boundary),
                         products, float(basis.relres))


@dataclass(frozen=True)
class Steihaug:
    """Steihaug-Toint truncated CG on the trust-region subproblem.

    Parameters
    ----------
    max_products : int
        CG iterations, each one product with H (default 20).
    rtol : float
        Stop when the CG residual is below rtol·‖g‖ (default 1e-2).

    Notes
    -----
    CG on H s = −g from s = 0, stopped at the boundary ‖s‖ = Δ (or along a direction of
    non-positive curvature); the first radius is the length of an unconstrained run's step,
    which makes the first steps sensitive to rounding on ill-conditioned H (tests: up to 1e-3
    relative after one iteration when only the rows' order changes).

    References
    ----------
    T. Steihaug, SIAM J. Numer. Anal. 20 (1983) 626–637.
    """

    kind: ClassVar[str] = "steihaug"
    keeps_basis: ClassVar[bool] = False
    max_products: int = field(default=20, metadata=_PRODUCTS)
    rtol: float = field(default=1e-2, metadata=_RTOL)

    def __post_init__(self) -> None:
        validate_config(self)

    def trust_step(self, problem: Any, state: SolverState) -> TrustStep:
        H = problem.gn_operator(state.pt)
        radius = state.radius
        if radius is None:
            first = steihaug_cg(H, state.g, math.inf, self.max_products, self.rtol)
            radius = float(first.s.norm())
            state = replace(state, work=state.work + 2 * first.n_products)
        res = steihaug_cg(H, state.g, radius, self.max_products, self.rtol)
        state = replace(state, radius=radius, work=state.work + 2 * res.n_products)
        return TrustStep(state, res.s, float(res.pred), bool(res.on_boundary), res.iterations,
                         float(res.relres))


@dataclass(frozen=True)
class PreconditionedCG:
    """Truncated Gauss-Newton: d ≈ −H⁻¹g by preconditioned CG (GNvpro's default descent).

    Parameters
    ----------
    max_products : int
        CG iterations, each one product with H (default 10).
    rtol : float
        Stop when the residual ‖H d + g‖ is below rtol·‖g‖ (default 1e-2).
    memory : int
        Curvature pairs (s, y = Δg) of the accepted steps in the L-BFGS preconditioner M⁻¹
        (default 10; 0: plain CG).

    Notes
    -----
    M⁻¹ is the L-BFGS inverse of the pairs (two-loop recursion, H⁰ = γI); a direction with
    gᵀd ≥ 0 in round-off falls back to −M⁻¹g, then to −g with the pairs dropped.

    References
    ----------
    J. Nocedal, S. Wright, Numerical Optimization, 2nd ed. (2006), Alg. 7.1; J. Morales,
    J. Nocedal, SIAM J. Optim. 10 (2000) 1079–1096 (L-BFGS preconditioned CG).
    """

    kind: ClassVar[str] = "cg"
    max_products: int = field(default=10, metadata=_PRODUCTS)
    rtol: float = field(default=1e-2, metadata=_RTOL)
    memory: int = 10  # curvature pairs of the preconditioner

    def __post_init__(self) -> None:
        validate_config(self)

    def direction(self, problem: Any, state: SolverState) -> Direction:
        g, pairs, gnorm = state.g, state.pairs, state.grad_norm

        def precond(r: Tensor) -> Tensor:
            return two_loop(r, pairs)

        cg = pcg(problem.gn_operator(state.pt), -g, self.rtol * gnorm, self.max_products,
                 precond)
        d, dg, pairs = _descending(cg.x, g, pairs)
        return Direction(d, dg, pairs, 1.0, cg.iterations,
                         cg.residual / gnorm if gnorm > 0 else 0.0)


@dataclass(frozen=True)
class LBFGSTwoLoop:
    """L-BFGS: d = −M⁻¹g, no products with H (L-BFGS-VarPro's descent).

    Parameters
    ----------
    memory : int
        Curvature pairs (s, y = Δg) kept (default 10; 0: steepest descent).

    Notes
    -----
    M⁻¹ by the two-loop recursion with H⁰ = γI, γ = sᵀy/yᵀy of the newest pair; the first
    trial step is 1, or min(1, 1/‖g‖₁) without pairs (as torch.optim.LBFGS).

    References
    ----------
    J. Nocedal, S. Wright, Numerical Optimization, 2nd ed. (2006), Alg. 7.4, 7.5.
    """

    kind: ClassVar[str] = "lbfgs"
    memory: int = 10  # curvature pairs (0: steepest descent)

    def __post_init__(self) -> None:
        validate_config(self)

    def direction(self, problem: Any, state: SolverState) -> Direction:
        g = state.g
        d, dg, pairs = _descending(-two_loop(g, state.pairs), g, state.pairs)
        alpha1 = 1.0 if pairs else min(1.0, 1.0 / float(g.abs().sum()))
        return Direction(d, dg, pairs, alpha1)


DESCENTS = (LanczosSubspace, Steihaug, PreconditionedCG, LBFGSTwoLoop)
