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
    H_GN v    = J_Sᵀ H_S[J_S v] + α_W J_Wᵀ J_W v + α_θ BᵀB v

For least squares H_GN = J_rᵀJ_r of the stacked residual
r = [vec(S − C)/√n; √α_θ Bθ; √α_W vec(W*)] (the reference's GN matrix). "kaufman" drops dW.
The W-side algebra runs in float64 whatever the network dtype. Reference: docs/method.md section 2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .affine import AffineHead
from .autodiff import FeatureMap, Linearisation
from .head import HeadSplit
from .inner import InnerSolution, solve_inner
from .losses import Loss
from .reduce import SampleReducer, resolve_reducer
from .regularizer import LinearMap, Regularizer
from .validate import check_batch

JACOBIANS = ("full", "kaufman")  # the full VarPro Jacobian, or Kaufman's (drops dW*/dθ)


@dataclass
class Point:
    """Everything known at one θ after the forward pass and the inner solve."""

    theta: Tensor
    value: float
    loss: float
    Zh: Tensor
    W: Tensor
    S: Tensor
    G: Tensor
    inner: InnerSolution
    vjp_fn: Linearisation | None  # E ↦ J_Zᵀ E and, by .jvp, v ↦ J_Z v at θ


@dataclass
class WarmStart:
    """A starting W for the inner solve (anything with .W works as `prev`)."""

    W: Tensor


@dataclass(frozen=True)
class InnerOptions:
    rtol: float = 1e-10
    atol: float = 1e-10
    max_iter: int = 100


def gram_path_pays(h: float | None, Zh: Tensor, W: Tensor) -> bool:
    """Whether a least-squares (H_S = h·I) product should use the W-side Gram identities:
    O(n p² + n c p) flops against 9 n c p, so when the features are not much wider than the
    outputs (p ≤ 2c)."""
    return h is not None and Zh.shape[1] <= 2 * W.shape[0]


def batch_targets(split: HeadSplit, loss: Loss, x: Tensor, y: Tensor) -> Tensor:
    """Check a batch (x, y) against the model (validate.check_batch) and the loss; return the
    float64 targets C."""
    check_batch(split, x, y)
    try:
        C = loss.prepare_targets(y, split.n_outputs).to(torch.float64)
    except ValueError as e:
        raise ValueError(f"y: {e}") from None
    if C.shape[1] != split.n_outputs:
        raise ValueError(
            f"targets have {C.shape[1]} columns but the head has {split.n_outputs} "
            "outputs: make nn.Linear's out_features match the targets"
        )
    return C


class ReducedObjective:
    """Φ_red on one batch (x, C) for the model described by `split`.

    ``reducer`` averages every sum over the batch's rows (default SampleReducer(len(x)): the
    mean over this batch); a reducer with the global n makes the batch one part of a larger
    objective (data-parallel processes, accumulated mini-batches). ``n`` is the local row count.
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
    ) -> None:
        if jacobian not in JACOBIANS:
            raise ValueError(f"jacobian must be 'full' or 'kaufman', got {jacobian!r}")
        if alpha_w < 0:
            raise ValueError(f"alpha_w must be >= 0, got {alpha_w}")
        if alpha_w == 0 and not loss.is_quadratic:
            raise ValueError("alpha_w must be > 0 for classification losses (W* must be unique)")
        self.split = split
        self.loss = loss
        self.C = batch_targets(split, loss, x, y)
        self.n = x.shape[0]
        self.reducer = resolve_reducer(reducer, self.n)
        self.head = AffineHead.from_split(split)
        self.alpha_w = float(alpha_w)
        self.features = FeatureMap(split, x, jvp_mode)
        self.reg = Regularizer(alpha_theta, self.features.layout, B)
        self.kaufman = jacobian == "kaufman"
        self.gn_alpha_w = gn_alpha_w
        self.inner_options = inner or InnerOptions()

    # ------------------------------------------------------------------ value
    def augment(self, Z: Tensor) -> Tensor:
        """Ẑ = [Z, 1] in float64 (no ones column for a head without bias)."""
        return self.head.augment(Z)

    def solve_inner(self, Zh: Tensor, W0: Tensor | None = None, finite: bool = False,
                    factor0: Callable[[], Tensor] | None = None) -> InnerSolution:
        """W*(Ẑ) (finite=True: Ẑ is known to be finite; C always is, batch_targets checked it;
        factor0: the Cholesky factor of a nearby H_W, the Newton solve's preconditioner)."""
        o = self.inner_options
        return solve_inner(self.loss, Zh, self.C, self.alpha_w, self.reducer, W0, finite=finite,
                           factor0=factor0, rtol=o.rtol, atol=o.atol, max_iter=o.max_iter)

    def evaluate(self, theta: Tensor, prev: Point | None = None, with_vjp: bool = True) -> Point:
        """Forward pass, inner solve W*(θ) (warm-started from prev.W, preconditioned by the
        Cholesky factor of prev's H_W when prev has a dense inner solution), Φ_red(θ).

        A non-finite forward pass gives value = inf (the trust region then rejects the step).
        """
        theta = theta.detach().to(torch.float64)
        W0 = prev.W if prev is not None and prev.W.numel() else None
        if W0 is not None and tuple(W0.shape) != self.head.w_shape:
            W0 = None
        factor0 = getattr(getattr(prev, "inner", None), "factor", None) if W0 is not None else None
        if with_vjp:
            Z, vjp_fn = self.features.with_vjp(theta)
            Z = Z.detach()
        else:
            Z, vjp_fn = self.features(theta), None
        if Z.ndim != 2 or Z.shape != (self.n, self.split.n_features):
            raise ValueError(
                f"features have shape {tuple(Z.shape)}, expected ({self.n}, "
                f"{self.split.n_features}) to feed the head"
            )
        Zh = self.augment(Z)
        if not torch.isfinite(Zh).all():
            inf = torch.full((), float("inf"))
            empty = InnerSolution(W=torch.empty(0), hess_inv=lambda v: v, converged=False,
                                  message="non-finite features (the step is rejected)")
            return Point(theta, float("inf"), float("inf"), Zh, inf, inf, inf, empty, None)
        sol = self.solve_inner(Zh, W0, finite=True, factor0=factor0)
        S = Zh @ sol.W.T
        L, G = self.loss.value_and_grad(S, self.C)
        L, G = self.reducer.mean(L), self.reducer.scale(G, inplace=True)
        value = L + 0.5 * self.alpha_w * sol.W.square().sum() + self.reg.value(theta)
        return Point(theta, float(value), float(L), Zh, sol.W, S, G, sol, vjp_fn)

    # --------------------------------------------------------------- gradient
    def gradient(self, pt: Point) -> Tensor:
        """∇Φ_red(θ) = J_Zᵀ(G W̃) + α_θ BᵀBθ (one backward pass)."""
        if pt.vjp_fn is None:
            pt.vjp_fn = self.features.with_vjp(pt.theta)[1]
        m = self.head.m
        return self.reducer.sum(pt.vjp_fn(pt.G @ pt.W[:, :m])) + self.reg.gradient(pt.theta)

    def jacobian(self, pt: Point) -> VarProJacobian:
        return VarProJacobian(self, pt)

    def gn_operator(self, pt: Point) -> Callable[[Tensor], Tensor]:
        """v ↦ H_GN(θ) v, with the feature linearisation shared by all products."""
        return self.jacobian(pt).gauss_newton


class VarProJacobian:
    """J_S (predictions) and J_W (= dW*/dθ) at one point, their adjoints, and H_GN.

    Every product reuses the point's recorded feature graph (autodiff.Linearisation).
    """

    def __init__(self, obj: ReducedObjective, pt: Point) -> None:
        self.obj, self.pt = obj, pt
        if pt.vjp_fn is None:
            pt.vjp_fn = obj.features.with_vjp(pt.theta)[1]
        self._vjp, self._jvp = pt.vjp_fn, pt.vjp_fn.jvp
        self.m = obj.head.m
        self._pad, self._sum = obj.head.pad, obj.reducer.sum
        h = obj.loss.scalar_hessian()
        self._h = None if h is None else obj.reducer.scale(h)  # H_S = (h/n)·I
        self._hK: Tensor | None = None

    def _hs(self, U: Tensor) -> Tensor:
        """H_S[U] of the averaged loss: the loss's per-row H_i u_i, divided by n."""
        return self.obj.reducer.scale(self.obj.loss.hess_apply(self.pt.S, self.obj.C, U))

    def forward(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """(J_S v, J_W v) = (dẐ Wᵀ + Ẑ dWᵀ, dW) for a flat direction v."""
        pt = self.pt
        dZh = self._pad(self._jvp(v))
        dS = dZh @ pt.W.T
        if self.obj.kaufman:
            return dS, torch.zeros_like(pt.W)
        BZ = self._sum(self._hs(dS).T @ pt.Zh + pt.G.T @ dZh)
        dW = -pt.inner.hess_inv(BZ)
        return dS + pt.Zh @ dW.T, dW

    def adjoint(self, X: Tensor, R: Tensor | None = None) -> Tensor:
        """J_Sᵀ X + J_Wᵀ R (flat float64), X ∈ R^{n×c}, R ∈ R^{c×p}."""
        pt = self.pt
        E = X @ pt.W
        if not self.obj.kaufman:
            XZ = self._sum(X.T @ pt.Zh)
            Y = pt.inner.hess_inv(XZ if R is None else XZ + R)
            E = E - self._hs(pt.Zh @ Y.T) @ pt.W - pt.G @ Y
        return self._sum(self._vjp(E[:, : self.m]))

    def gauss_newton(self, v: Tensor) -> Tensor:
        """H_GN v = J_Sᵀ H_S[J_S v] + α_W J_Wᵀ J_W v + α_θ BᵀB v (one JVP + one VJP)."""
        if gram_path_pays(self._h, self.pt.Zh, self.pt.W):
            return self._gauss_newton_scalar_hessian(v, self._h)
        dS, dW = self.forward(v)
        R = self.obj.alpha_w * dW if (self.obj.gn_alpha_w and not self.obj.kaufman) else None
        return self.adjoint(self._hs(dS), R) + self.obj.reg.gauss_newton(v)

    def _gauss_newton_scalar_hessian(self, v: Tensor, h: float) -> Tensor:
        """H_GN v when H_S = h·I (least squares), without any n×c temporary.

        With K = WᵀW (once per point), P = Ẑᵀ dẐ and H_W = h ẐᵀẐ + α_W I (h includes the 1/n,
        the row sums P and Gᵀ dẐ and the θ-pullback go through the reducer):
            Q = H_W⁻¹(h W Pᵀ),  M = H_W⁻¹(Gᵀ dẐ),  dW = −Q − M,
            Y = H_W⁻¹(h (W Pᵀ + dW ẐᵀẐ) + α_W dW) = dW + Q = −M   (α_W J_Wᵀ J_W included),
            E = h dẐ K + h Ẑ (dW − Y)ᵀ W − G Y = h dẐ K − h Ẑ Qᵀ W + G M,
            H_GN v = J_Zᵀ E[:, :m] + α_θ BᵀB v:
        forward/adjoint's product without n×c arrays (chosen by `gram_path_pays`). Without
        α_W J_Wᵀ J_W (gn_alpha_w=False) Y gains −α_W H_W⁻¹ dW = α_W H_W⁻¹(Q + M).
        """
        pt, obj = self.pt, self.obj
        if self._hK is None:
            self._hK = h * (pt.W.T @ pt.W)
        dZh = self._pad(self._jvp(v))
        E = dZh @ self._hK
        if not obj.kaufman:
            Q = pt.inner.hess_inv(pt.W @ (h * self._sum(dZh.T @ pt.Zh)))
            M = pt.inner.hess_inv(self._sum(pt.G.T @ dZh))
            D, Y = -Q, -M  # dW − Y and Y
            if not obj.gn_alpha_w and obj.alpha_w > 0:
                extra = obj.alpha_w * pt.inner.hess_inv(Q + M)
                D, Y = D - extra, Y + extra
            E = E + pt.Zh @ (h * (D.T @ pt.W)) - pt.G @ Y
        return self._sum(self._vjp(E[:, : self.m])) + obj.reg.gauss_newton(v)
