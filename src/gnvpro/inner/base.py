"""The result of an inner solve W*(θ) = argmin_W Φ(θ, W), shared by all losses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor


@dataclass
class InnerSolution:
    """W* and what the outer method needs of it.

    Convention (rows are samples): Ẑ ∈ R^{n×p} (p = m+1 with the ones column for the bias),
    predictions S = Ẑ Wᵀ ∈ R^{n×c}, W ∈ R^{c×p}, all float64.

    hess_inv applies H_W⁻¹ to a (c, p) tensor, where
        H_W[V] = H_S[Ẑ Vᵀ]ᵀ Ẑ + α_W V
    is the Hessian of Φ in W at the returned W*, factorised once (Cholesky, at its first use)
    and reused. factor (dense Newton path only) returns a Cholesky factor L, H_W = L Lᵀ, of H_W
    at W* or near it (that of hess_inv once formed, else the one the Newton iteration kept, else
    formed at W* on the call): the next solve's preconditioner (solve_newton's factor0).
    ``seconds`` does not include a factorisation deferred to hess_inv or factor.
    """

    W: Tensor
    hess_inv: Callable[[Tensor], Tensor]
    iterations: int = 0
    grad_norm: float = 0.0
    converged: bool = True
    seconds: float = 0.0
    message: str = ""
    factor: Callable[[], Tensor] | None = None
