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
    Hybrid            LBFGSTwoLoop or PreconditionedCG, whichever lowered Φ more per work unit
                      lately (measured; the other is probed at growing intervals)
A direction that is not a descent direction in round-off falls back to −M⁻¹g, then to −g with
the pairs dropped. ``max_products`` caps the products with H per iteration (2 work units each),
``rtol`` stops the Krylov iteration at a residual of rtol·‖g‖.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, ClassVar

from torch import Tensor

from .linalg import lanczos, newton_step_in_subspace, steihaug_cg, tr_step_in_subspace
from .linalg.cg import pcg
from .linalg.lbfgs import two_loop
from .state import SolverState, SwitchMemo
from .validate import choices, in_range, validate_config

__all__ = ["DESCENTS", "Direction", "Hybrid", "LBFGSTwoLoop", "LanczosSubspace",
           "PreconditionedCG", "Steihaug", "TrustStep"]

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
    back to −g), the first trial step length, products with H (2 work units each), relres;
    what the descent carries to the next iteration (``memo``, the state's) and the mode that
    made d (``mode``: Hybrid's, for the step's record)."""

    d: Tensor
    dg: float
    pairs: tuple
    alpha1: float = 1.0
    products: int = 0
    relres: float = 0.0
    memo: SwitchMemo | None = None
    mode: str = ""


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
    """Truncated Gauss-Newton: d ≈ −H⁻¹g by preconditioned CG (one of Hybrid's two modes).

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


def _agree(problem: Any, flag: bool) -> bool:
    """``flag`` on every process (the problem's reducer; one process: flag): a decision must
    be the same on all ranks of a data-parallel run."""
    reducer = getattr(problem, "reducer", None)
    return reducer.all(flag) if reducer is not None else bool(flag)


@dataclass(frozen=True)
class Hybrid:
    """Truncated Gauss-Newton or the L-BFGS direction, whichever lowers Φ more per unit of cost.

    Parameters
    ----------
    max_products, rtol, memory : int, float, int
        PreconditionedCG's settings in its mode (defaults 10, 1e-2, 10); the ``memory`` pairs
        are shared by both modes (the L-BFGS memory and the CG preconditioner).
    start : {"auto", "cg", "lbfgs"}
        The first mode; "auto" (default): truncated Gauss-Newton ("cg") where W* has a closed
        form (least squares), the L-BFGS direction where it takes Newton's method
        (cross-entropy, logistic: a Gauss-Newton iteration there also factors H_W at every
        point, and costs several L-BFGS ones).
    probe_after : int
        Iterations in the mode before it probes the other (default 2; doubled after each probe
        that loses, up to ``max_gap``, default 64).
    probe_share : float
        After the first probe (which comes after probe_after iterations), a probe is also
        due only once the mode has run probe_share times the cost of the last probe
        (default 4: probes take ≤ 1/5 of the cost).
    cg_price : float
        The cost of a truncated-GN work unit in L-BFGS units (default 2/3). Work units count a
        Gauss-Newton product as 2 passes and no inner Newton solve; measured per second of one
        thread, a truncated-GN unit cost 0.49–0.90 of an L-BFGS unit on the peer problems and
        0.62–0.80 on Indian Pines (benchmarks/unit_cost.py). 1: price the units alike.

    Notes
    -----
    The rate of a stretch of iterations is r = (Φ_start − Φ_end) / (its cost: the work units
    spent, passes over the data as in the records' work_units, times the mode's price: cg_price
    for truncated GN, 1 for L-BFGS). A probe is one iteration of the other mode;
    after it the mode runs until as much cost has been spent, and the probe's rate is compared
    with the mode's around it, √(r_before·r_after) (r_before over the mode's last ≤ 4
    iterations; rates fall about geometrically). Higher: the probed mode becomes the mode
    (gap = probe_after); lower: the gap doubles. A mode whose last iteration did not lower Φ
    probes at once. The choices are a function of Φ and the work counts, so a run is
    reproducible and every rank of a data-parallel run chooses alike (checked by the
    reducer's ``all``); the memo (gnvpro.state.SwitchMemo) is in the state dict, so a resumed
    run takes the iterations of an uninterrupted one. Work units are not seconds: they do not
    count inner Newton iterations, and a Gauss-Newton product through a kept linearisation
    costs less than two passes; cg_price corrects for both on average (timing the iterations
    instead made the choices differ from run to run). Measured against both modes alone and
    the peer optimisers: docs/results.md, "The default since issue 22" and "Pricing the
    hybrid's units".
    """

    kind: ClassVar[str] = "hybrid"
    max_products: int = field(default=10, metadata=_PRODUCTS)
    rtol: float = field(default=1e-2, metadata=_RTOL)
    memory: int = 10  # curvature pairs, shared by both modes
    probe_after: int = field(default=2, metadata=in_range(low=1))
    max_gap: int = field(default=64, metadata=in_range(low=1))
    probe_share: float = field(default=4.0, metadata=in_range(low=0.0))
    start: str = field(default="auto", metadata=choices("auto", "cg", "lbfgs"))
    cg_price: float = field(default=2 / 3, metadata=in_range(low=0.0, low_inclusive=False))

    def __post_init__(self) -> None:
        validate_config(self)

    def _first(self, problem: Any) -> str:
        """``start``; "auto": "cg" where W* has a closed form (a quadratic loss), else "lbfgs"
        (a Newton solve per trial point and a factored H_W per point make a Gauss-Newton
        iteration several L-BFGS ones)."""
        if self.start != "auto":
            return self.start
        quadratic = getattr(getattr(problem, "loss", None), "is_quadratic", True)
        return "cg" if quadratic else "lbfgs"

    def _price(self, mode: str) -> float:
        """The cost of one of ``mode``'s work units in L-BFGS units."""
        return self.cg_price if mode == "cg" else 1.0

    def _next(self, problem: Any, state: SolverState) -> SwitchMemo:
        """The memo of this iteration: its mode (``memo.mode``, or the other one in the
        "probe" phase), phase and marks, from the last iteration's memo and where it ended."""
        now = (float(state.pt.value), float(state.work))
        memo = state.memo
        if memo is None:
            return SwitchMemo(self._first(problem), "run", (now,), math.nan, math.nan,
                              math.nan, 0, self.probe_after, now[1])
        first, last = memo.marks[0], memo.marks[-1]
        own, other = self._price(memo.mode), self._price(_other(memo.mode))
        if memo.phase == "probe":  # then the mode again, until as much cost has been spent
            return replace(memo, phase="after", marks=(now,), probe_work=now[1] - first[1],
                           probe_rate=_rate(first, now), started=now[1])
        if memo.phase == "after":
            spent = (now[1] - first[1]) * own
            if spent < memo.probe_work * other and len(memo.marks) < SwitchMemo.KEEP:
                return replace(memo, marks=(*memo.marks, now))
            here = _middle(memo.before_rate, _rate(first, now)) / own
            if _agree(problem, memo.probe_rate / other > here):
                mode, gap = _other(memo.mode), self.probe_after
            else:
                mode, gap = memo.mode, min(2 * memo.gap, self.max_gap)
            return replace(memo, mode=mode, phase="run", marks=(now,), since=0, gap=gap,
                           started=now[1])
        since = memo.since + 1  # the mode's iterations since the last probe
        work = memo.probe_work if memo.probe_work > 0 else 0.0  # the first: after probe_after
        spent = (now[1] - memo.started) * own
        due = since >= memo.gap and spent >= self.probe_share * work * other
        if due or not _rate(last, now) > 0:
            # the mode's rate over its last ≤ 4 iterations
            return replace(memo, phase="probe", marks=(now,), since=since, started=now[1],
                           before_rate=_rate(memo.marks[-4:][0], now))
        return replace(memo, marks=(*memo.marks, now)[-4:], since=since)

    @cached_property
    def _modes(self) -> dict[str, Any]:
        """The two descents, built once (a descent checks its settings when it is made)."""
        return {"cg": PreconditionedCG(self.max_products, self.rtol, self.memory),
                "lbfgs": LBFGSTwoLoop(self.memory)}

    def direction(self, problem: Any, state: SolverState) -> Direction:
        memo = self._next(problem, state)
        run = _other(memo.mode) if memo.phase == "probe" else memo.mode
        return replace(self._modes[run].direction(problem, state), memo=memo, mode=run)


def _other(mode: str) -> str:
    return "cg" if mode == "lbfgs" else "lbfgs"


def _rate(start: tuple[float, float], end: tuple[float, float]) -> float:
    """−ΔΦ/Δwork between two (Φ, work) marks (nan where no work was spent)."""
    dw = end[1] - start[1]
    return (start[0] - end[0]) / dw if dw > 0 else math.nan


def _middle(before: float, after: float) -> float:
    """The rate in the middle of two measured around a probe: √(before·after) (rates decay
    about geometrically), their mean where one is ≤ 0 or unknown."""
    if before > 0 and after > 0:
        return math.sqrt(before * after)
    known = [r for r in (before, after) if math.isfinite(r)]
    return sum(known) / len(known) if known else math.nan


DESCENTS = (LanczosSubspace, Steihaug, PreconditionedCG, LBFGSTwoLoop, Hybrid)
