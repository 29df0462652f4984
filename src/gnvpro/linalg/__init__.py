"""Linear algebra of the trust-region outer solver (1-D torch tensors, no networks).

* :func:`lanczos` — Krylov basis V, tridiagonal T = V H Vᵀ of a PSD operator, for b = −grad;
* :func:`solve_tr_subproblem` — exact small dense trust-region subproblem (Moré–Sorensen);
* :func:`tr_step_in_subspace` / :func:`newton_step_in_subspace` — the same in a Lanczos basis;
* :func:`steihaug_cg` — Steihaug–Toint truncated CG alternative.
"""

from .lanczos import KrylovBasis, lanczos, pinv_solve
from .steihaug import SteihaugResult, steihaug_cg
from .trust_subproblem import (
    TRSolution,
    newton_step_in_subspace,
    solve_tr_subproblem,
    tr_step_in_subspace,
)

__all__ = [
    "KrylovBasis",
    "SteihaugResult",
    "TRSolution",
    "lanczos",
    "newton_step_in_subspace",
    "pinv_solve",
    "solve_tr_subproblem",
    "steihaug_cg",
    "tr_step_in_subspace",
]
