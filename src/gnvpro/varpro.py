"""Variable projection: the reduced objective Φ_red(θ) = Φ(θ, W*(θ)) and its derivatives.

Rows are samples: features Z ∈ R^{n×m}, Ẑ = [Z, 1] ∈ R^{n×p}, head W = [W̃, b] ∈ R^{c×p}
(gnvpro.affine.AffineHead), predictions S = Ẑ Wᵀ. L = (1/n) Σ_i ℓ_i is the average loss and
G = ∂L/∂S, H_S[U] its derivatives: the losses (gnvpro.losses) return the sums and per-row
terms, and the objective's SampleReducer (gnvpro.reduce) takes every average over samples —
mean of the loss and of each product summed over rows (XᵀẐ, J_Zᵀ E), scale of G and H_S[U].

    Φ(θ, W)   = L(Ẑ(θ) Wᵀ, C) + (α_W/2)‖W‖² + (α_θ/2)‖Bθ‖²
    ∇Φ_red    = J_Zᵀ (G W̃) + α_θ BᵀBθ                          (envelope: ∇_W Φ(θ, W*) = 0)
    H_W[V]    = H_S[Ẑ Vᵀ]ᵀ Ẑ + α_W V,   B_Z[dZ] = H_S[dẐ Wᵀ]ᵀ Ẑ + Gᵀ dẐ,   dẐ = [dZ, 0]
    dW        = −H_W⁻¹ B_Z[dZ]                                  (implicit function theorem)
    J_S dθ    = dẐ Wᵀ + Ẑ dWᵀ                                    (Golub-Pereyra, full)
    J_Sᵀ X + J_Wᵀ R = J_Zᵀ [X W − H_S[Ẑ Yᵀ] W − G Y]_{:, :m},   Y = H_W⁻¹(XᵀẐ + R)
    H_GN v    = J_Sᵀ H_S[J_S v] + α_W J_Wᵀ J_W v + α_θ BᵀB v        (gnvpro.jacobian)

For least squares H_GN = J_rᵀJ_r of the stacked residual
r = [vec(S − C)/√n; √α_θ Bθ; √α_W vec(W*)] (the reference's GN matrix). "kaufman" drops dW.
The W-side algebra runs in float64 whatever the network dtype. Reference: docs/method.md section 2.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .affine import AffineHead
from .autodiff import FeatureMap, Linearisation
from .head import HeadSplit
from .inner import InnerSolution, solve_inner
from .jacobian import VarProJacobian, accumulate
from .losses import Loss
from .reduce import SampleReducer, resolve_reducer
from .regularizer import LinearMap, Regularizer
from .targets import batch_targets, check_target_classes

JACOBIANS = ("full", "kaufman")  # the full VarPro Jacobian, or Kaufman's (drops dW*/dθ)
MEMORY = ("auto", "keep", "recompute")  # what a point keeps (ReducedObjective)


@dataclass
class Point:
    """Everything kept at one θ after the forward passes and the inner solve.

    Ẑ (all chunks stacked, n×p) and W* are always kept. ``SG`` holds S = Ẑ Wᵀ and G = ∂L/∂S
    (n×c) and ``lins`` each chunk's feature linearisation when the objective keeps them
    (``memory="keep"``); otherwise both are recomputed chunk by chunk where needed.
    """

    theta: Tensor
    value: float
    loss: float
    Zh: Tensor
    W: Tensor
    inner: InnerSolution
    SG: tuple[Tensor, Tensor] | None = None
    lins: list[Linearisation | None] = field(default_factory=list)

    @property
    def S(self) -> Tensor:
        """S = Ẑ W*ᵀ (n×c): the kept predictions, or formed now."""
        return self.SG[0] if self.SG is not None else self.Zh @ self.W.T

    @property
    def G(self) -> Tensor:
        """G = ∂L/∂S (n×c, the 1/n included) when kept (``memory="keep"``)."""
        if self.SG is None:
            raise AttributeError("G is not kept at this point (memory='recompute'): use "
                                 "ReducedObjective.chunk_SG")
        return self.SG[1]

    @property
    def vjp_fn(self) -> Linearisation | None:
        """The feature linearisation of a one-chunk objective (None: not built yet)."""
        return self.lins[0] if len(self.lins) == 1 else None

    @vjp_fn.setter
    def vjp_fn(self, lin: Linearisation | None) -> None:
        self.lins = [None] * len(self.lins) if lin is None else [lin]


@dataclass
class WarmStart:
    """A starting W for the inner solve (anything with .W works as `prev`)."""

    W: Tensor


@dataclass(frozen=True)
class InnerOptions:
    """The inner stopping test ‖∇_W Φ‖ ≤ max(atol, rtol·‖∇_W Φ(0)‖, forcing·min(‖g‖, α_W‖W0‖)),
    g the reduced gradient where the outer step starts (evaluate's outer_grad_norm), W0 the warm
    start (forcing 0: exact)."""

    rtol: float = 1e-10
    atol: float = 1e-10
    max_iter: int = 100
    forcing: float = 0.0


def chunk_bounds(n: int, chunks: int | Sequence[int]) -> list[int]:
    """Row offsets 0 = b_0 < b_1 < … < b_K = n of K chunks: ``chunks`` near-equal blocks (an
    int, as torch.tensor_split) or the given block sizes (each ≥ 1, summing to n)."""
    if isinstance(chunks, bool):
        raise TypeError("chunks must be an int or a sequence of block sizes, got a bool")
    if isinstance(chunks, int):
        if not 1 <= chunks <= n:
            raise ValueError(f"chunks must lie in [1, {n}] (the number of samples), got {chunks}")
        sizes = [len(b) for b in torch.tensor_split(torch.arange(n), chunks)]
    else:
        sizes = [int(k) for k in chunks]
        if not sizes or min(sizes) < 1 or sum(sizes) != n:
            raise ValueError(f"chunk sizes must be positive and sum to the {n} samples, got "
                             f"{sizes[:8]}{'…' if len(sizes) > 8 else ''} (sum {sum(sizes)})")
    return [0, *itertools.accumulate(sizes)]


class ReducedObjective:
    """Φ_red on one batch (x, C) for the model described by `split`, summed chunk by chunk.

    ``reducer`` averages every sum over the batch's rows (default SampleReducer(len(x)): the
    mean over this batch); a reducer with the global n makes the batch one part of a larger
    objective (data-parallel processes, accumulated mini-batches). ``n`` is the local row count.

    ``chunks`` (an int: near-equal row blocks; or the block sizes, e.g. a DataLoader's batch
    sizes, see ``from_batches``) splits every pass over the rows: forward passes, J_Z v, J_Zᵀ E
    and the n×c terms of the products run one block at a time and their row sums accumulate
    (ΣΣ_k = Σ). ``memory`` picks what a point keeps:

    - "keep": every chunk's feature linearisation (autograd graph / linearize trace) and
      S, G (n×c); each Gauss-Newton product reuses them (fastest; memory of the whole batch);
    - "recompute": only Ẑ (n×p) and W*; each product re-runs the chunk's forward pass (and trace)
      and forms S_k, G_k per chunk: peak memory follows the chunk size, at the price of about one
      forward pass per chunk and product (benchmarks/memory.py measures both);
    - "auto" (default): "keep" for one chunk, "recompute" for several.

    The inner solve works on the stacked Ẑ (n×p) and C: the least-squares normal equations
    have no n×c temporary; Newton's solve for the classification losses forms n×c arrays.
    """

    def __init__(
        self,
        split: HeadSplit,
        loss: Loss,
        x: Tensor,
        y: Tensor,
        alpha_w: float,
        alpha_theta: float,
        B: LinearMap | None = None,
        jacobian: str = "full",
        gn_alpha_w: bool = True,
        inner: InnerOptions | None = None,
        jvp_mode: str = "auto",
        reducer: SampleReducer | None = None,
        chunks: int | Sequence[int] = 1,
        memory: str = "auto",
    ) -> None:
        if jacobian not in JACOBIANS:
            raise ValueError(f"jacobian must be 'full' or 'kaufman', got {jacobian!r}")
        if memory not in MEMORY:
            raise ValueError(f"memory must be one of {MEMORY}, got {memory!r}")
        if alpha_w < 0:
            raise ValueError(f"alpha_w must be >= 0, got {alpha_w}")
        if alpha_w == 0 and not loss.is_quadratic:
            raise ValueError("alpha_w must be > 0 for classification losses (W* must be unique)")
        self.split = split
        self.loss = loss
        try:
            self.C = batch_targets(split, loss, x, y, check_classes=False)
            refused = None
        except (TypeError, ValueError) as e:
            refused = e
            if getattr(reducer, "parts", 1) > 1 and isinstance(x, Tensor) and x.ndim and (
                    x.shape[0] == 0):
                refused = ValueError(f"{e} (data-parallel: every process needs at least one "
                                     "row of the batch; split n rows over at most n processes)")
        if reducer is not None and not reducer.all(refused is None):  # every process learns it
            raise refused or ValueError("another process refused its part of the batch (its "
                                        "message says why); this process's part was accepted")
        if refused is not None:
            raise refused
        self.n = x.shape[0]
        self.reducer = resolve_reducer(reducer, self.n)
        check_target_classes(loss, self.C, self.reducer)
        self.bounds = chunk_bounds(self.n, chunks)
        self.keeps = memory == "keep" or (memory == "auto" and len(self.bounds) == 2)
        self.head = AffineHead.from_split(split)
        self.alpha_w = float(alpha_w)
        self.maps = [FeatureMap(split, x[a:b] if len(self.bounds) > 2 else x, jvp_mode)
                     for a, b in itertools.pairwise(self.bounds)]
        self.features = self.maps[0]  # θ's layout and dtype are every chunk's
        self.reg = Regularizer(alpha_theta, self.features.layout, B)
        self.kaufman = jacobian == "kaufman"
        self.gn_alpha_w = gn_alpha_w
        self.inner_options = inner or InnerOptions()

    @classmethod
    def from_batches(cls, split: HeadSplit, loss: Loss, batches: Iterable[tuple[Tensor, Tensor]],
                     alpha_w: float, alpha_theta: float, **options: Any) -> ReducedObjective:
        """Φ_red over the union of ``batches`` (e.g. one pass of a DataLoader with a fixed
        order), one chunk per batch: the rows are concatenated once, the chunks are the
        batches' sizes."""
        xs, ys = [], []
        for x, y in batches:
            xs.append(x)
            ys.append(y)
        if not xs:
            raise ValueError("batches is empty: the objective needs at least one batch")
        return cls(split, loss, torch.cat(xs), torch.cat(ys), alpha_w, alpha_theta,
                   chunks=[len(x) for x in xs], **options)

    @property
    def n_chunks(self) -> int:
        return len(self.maps)

    def rows(self, T: Tensor, k: int) -> Tensor:
        """The rows of chunk k of a per-sample tensor T (a view)."""
        if len(self.bounds) == 2:
            return T
        return T[self.bounds[k]: self.bounds[k + 1]]

    # ------------------------------------------------------------------ value
    def augment(self, Z: Tensor) -> Tensor:
        """Ẑ = [Z, 1] in float64 (no ones column for a head without bias)."""
        return self.head.augment(Z)

    def solve_inner(self, Zh: Tensor, W0: Tensor | None = None, finite: bool = False,
                    factor0: Callable[[], Tensor] | None = None,
                    outer_grad_norm: float | None = None) -> InnerSolution:
        """W*(Ẑ) (finite=True: Ẑ is known to be finite; C always is, batch_targets checked it;
        factor0: the Cholesky factor of a nearby H_W, the Newton solve's preconditioner), to
        ‖∇_W Φ‖ ≤ max(atol, rtol·‖∇_W Φ(0)‖, forcing·min(outer_grad_norm, α_W‖W0‖))
        (InnerOptions). Φ is α_W-strongly convex in W, so the second bound keeps
        ‖W̃ − W*‖ ≤ forcing·‖W0‖ where α_W is small (nearly separable classes)."""
        o, gn = self.inner_options, outer_grad_norm
        if o.forcing > 0 and gn is not None:
            if W0 is not None and math.isfinite(gn):
                gn = min(gn, self.alpha_w * float(W0.norm()))
            atol = max(o.atol, o.forcing * gn)
        else:
            atol = o.atol
        return solve_inner(self.loss, Zh, self.C, self.alpha_w, self.reducer, W0, finite=finite,
                           factor0=factor0, rtol=o.rtol, atol=atol, max_iter=o.max_iter)

    def _features(self, theta: Tensor, k: int,
                  with_vjp: bool) -> tuple[Tensor, Linearisation | None]:
        """Chunk k's features Z_k(θ) (checked n_k × m) and, with_vjp, its linearisation."""
        fmap = self.maps[k]
        if with_vjp:
            Z, lin = fmap.with_vjp(theta)
            Z = Z.detach()
        else:
            Z, lin = fmap(theta), None
        rows = self.bounds[k + 1] - self.bounds[k]
        if Z.ndim != 2 or Z.shape != (rows, self.split.n_features):
            raise ValueError(
                f"features have shape {tuple(Z.shape)}, expected ({rows}, "
                f"{self.split.n_features}) to feed the head"
            )
        return Z, lin

    def evaluate(self, theta: Tensor, prev: Point | None = None, with_vjp: bool = True, *,
                 outer_grad_norm: float | None = None) -> Point:
        """Forward passes, inner solve W*(θ) (warm-started from prev.W, preconditioned by the
        Cholesky factor of prev's H_W when prev has a dense inner solution), Φ_red(θ).
        outer_grad_norm: ‖g‖ at the outer iterate the search starts from (the inner tolerance
        follows it when InnerOptions.forcing > 0; then math.inf keeps prev.W, no Newton step).

        A non-finite forward pass gives value = inf (the trust region then rejects the step).
        """
        theta = theta.detach().to(torch.float64)
        W0 = prev.W if prev is not None and prev.W.numel() else None
        if W0 is not None and tuple(W0.shape) != self.head.w_shape:
            W0 = None
        factor0 = getattr(getattr(prev, "inner", None), "factor", None) if W0 is not None else None
        parts = [self._features(theta, k, with_vjp and self.keeps) for k in range(self.n_chunks)]
        lins = [lin for _, lin in parts]
        Zh = (self.augment(parts[0][0]) if len(parts) == 1
              else torch.cat([self.augment(Z) for Z, _ in parts]))
        del parts
        if not self.reducer.all(bool(torch.isfinite(Zh).all())):
            inf = torch.full((), float("inf"))
            empty = InnerSolution(W=torch.empty(0), hess_inv=lambda v: v, converged=False,
                                  message="non-finite features (the step is rejected)")
            return Point(theta, float("inf"), float("inf"), Zh, inf, empty, (inf, inf), [])
        sol = self.solve_inner(Zh, W0, finite=True, factor0=factor0,
                               outer_grad_norm=outer_grad_norm)
        SG = None
        if self.keeps:
            S = Zh @ sol.W.T
            L, G = self.loss.value_and_grad(S, self.C)
            SG = (S, self.reducer.scale(G, inplace=True))
        else:
            L = accumulate(self.loss.value(self.rows(Zh, k) @ sol.W.T, self.rows(self.C, k))
                            for k in range(self.n_chunks))
        L = self.reducer.mean(L)
        value = L + 0.5 * self.alpha_w * sol.W.square().sum() + self.reg.value(theta)
        return Point(theta, float(value), float(L), Zh, sol.W, sol, SG, lins)

    # ------------------------------------------------------- per-chunk pieces
    def chunk_SG(self, pt: Point, k: int) -> tuple[Tensor, Tensor]:
        """(S_k, G_k) of chunk k at pt: views of the kept S, G, or formed now
        (S_k = Ẑ_k W*ᵀ, G_k = ∂L/∂S_k with the 1/n)."""
        if pt.SG is not None:
            return self.rows(pt.SG[0], k), self.rows(pt.SG[1], k)
        S = self.rows(pt.Zh, k) @ pt.W.T
        return S, self.reducer.scale(self.loss.grad(S, self.rows(self.C, k)), inplace=True)

    def linearisation(self, pt: Point, k: int) -> Linearisation:
        """Chunk k's feature linearisation at pt.θ: the kept one, or recorded now (and kept
        when the objective keeps them)."""
        if len(pt.lins) != self.n_chunks:
            pt.lins = [None] * self.n_chunks
        lin = pt.lins[k]
        if lin is None:
            lin = self.maps[k].linearise(pt.theta)
            if self.keeps:
                pt.lins[k] = lin
        return lin

    def chunk_jvp(self, pt: Point, k: int) -> Callable[[Tensor], Tensor]:
        """v ↦ J_Z v on chunk k (through the kept linearisation, or a fresh one)."""
        if self.keeps:
            return self.linearisation(pt, k).jvp
        return self.maps[k].jvp_fn(pt.theta)

    # --------------------------------------------------------------- gradient
    def gradient(self, pt: Point) -> Tensor:
        """∇Φ_red(θ) = J_Zᵀ(G W̃) + α_θ BᵀBθ (one backward pass per chunk)."""
        m = self.head.m
        g = accumulate(self.linearisation(pt, k)(self.chunk_SG(pt, k)[1] @ pt.W[:, :m])
                        for k in range(self.n_chunks))
        return self.reducer.sum(g) + self.reg.gradient(pt.theta)

    def jacobian(self, pt: Point) -> VarProJacobian:
        return VarProJacobian(self, pt)

    def gn_operator(self, pt: Point) -> Callable[[Tensor], Tensor]:
        """v ↦ H_GN(θ) v, with the feature linearisations shared by all products (kept) or
        recomputed per product (``memory="recompute"``)."""
        return self.jacobian(pt).gauss_newton
