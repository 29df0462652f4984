"""The joint objective Φ(θ, W) (no variable projection): a gnvpro.solver Problem on z = (θ, vec W).

    Φ(θ, W) = L(Ẑ(θ) Wᵀ, C) + (α_W/2)‖W‖² + (α_θ/2)‖Bθ‖²            (rows are samples)
    ∇_θ Φ   = J_Zᵀ(G W̃) + α_θ BᵀBθ,        ∇_W Φ = Gᵀ Ẑ + α_W W
    J dz    = dẐ Wᵀ + Ẑ dWᵀ,   dẐ = [J_Z dθ, 0]                      (Jacobian of the predictions)
    H_GN dz = Jᵀ H_S[J dz] + blockdiag(α_θ BᵀB, α_W I)                ("gn", coupled)

The reference's block-diagonal variant ("gn-blockdiag") drops the θ–W coupling:

    H_θθ dθ = J_Zᵀ(H_S[dẐ Wᵀ] W̃) + α_θ BᵀB dθ,    H_WW dW = H_S[Ẑ dWᵀ]ᵀ Ẑ + α_W dW

L = (1/n) Σ_i ℓ_i is the average loss, G and H_S its derivatives: the losses return sums and
per-row terms, the problem's SampleReducer (gnvpro.reduce) takes every average over samples, as
in gnvpro.varpro. Ẑ and dẐ come from the shared gnvpro.affine.AffineHead.

The same gnvpro.solver (any descent × search: the paper's trust region by default) runs it, so
work units are counted exactly as for GNvpro: objective + gradient 2, each H_GN v 2 (also for the
block-diagonal operator, whose W block is cheap), each trial value 1, the gradient at an accepted
point 1. There is no inner solve (points carry inner=None).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .affine import AffineHead
from .autodiff import FeatureMap, Linearisation
from .head import HeadSplit
from .losses import Loss
from .reduce import SampleReducer, resolve_reducer
from .regularizer import LinearMap, Regularizer
from .targets import batch_targets, check_target_classes

__all__ = ["JointPoint", "JointProblem"]


@dataclass
class JointPoint:
    """Φ at z = (θ, vec W). `theta` is the full flat z (the solver steps on it)."""

    theta: Tensor
    value: float
    loss: float
    W: Tensor
    Zh: Tensor
    S: Tensor
    G: Tensor
    vjp_fn: Linearisation | None
    inner: None = None


class JointProblem:
    """Φ(θ, W) on one batch as a gnvpro.solver Problem over z = [θ; vec W] (row-major vec).

    ``reducer`` averages every sum over the batch's rows (default SampleReducer(len(x))).
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
        coupled: bool = True,
        jvp_mode: str = "auto",
        reducer: SampleReducer | None = None,
    ) -> None:
        if alpha_w < 0:
            raise ValueError(f"alpha_w must be >= 0, got {alpha_w}")
        self.split = split
        self.loss = loss
        self.C = batch_targets(split, loss, x, y, check_classes=False)
        self.reducer = resolve_reducer(reducer, x.shape[0])
        check_target_classes(loss, self.C, self.reducer)
        self.head = AffineHead.from_split(split)
        self.features = FeatureMap(split, x, jvp_mode)
        self.reg = Regularizer(alpha_theta, self.features.layout, B)
        self.alpha_w = float(alpha_w)
        self.coupled = coupled
        self.m = self.head.m
        self.n_theta = self.features.layout.size
        self.w_shape = self.head.w_shape

    # ------------------------------------------------------------------ layout
    def pack(self, theta: Tensor, W: Tensor) -> Tensor:
        """z = [θ; vec W] (float64)."""
        return torch.cat([theta.reshape(-1), W.reshape(-1)]).to(torch.float64)

    def unpack(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(θ, W) views of z."""
        return z[: self.n_theta], z[self.n_theta :].reshape(self.w_shape)

    def _hs(self, pt: JointPoint, U: Tensor) -> Tensor:
        """H_S[U] of the averaged loss: the loss's per-row H_i u_i, divided by n."""
        return self.reducer.scale(self.loss.hess_apply(pt.S, self.C, U))

    # ----------------------------------------------------------------- Problem
    def evaluate(self, z: Tensor, prev: object = None, *,
                 outer_grad_norm: float | None = None) -> JointPoint:
        """Φ(θ, W), the predictions S = Ẑ Wᵀ and G = ∂L/∂S (prev and outer_grad_norm are
        unused: no inner solve)."""
        z = z.detach().to(torch.float64)
        theta, W = self.unpack(z)
        Z, vjp_fn = self.features.with_vjp(theta)
        Zh = self.head.augment(Z.detach())
        if not torch.isfinite(Zh).all():
            inf = torch.full((), float("inf"), dtype=torch.float64)
            return JointPoint(z, float("inf"), float("inf"), W, Zh, inf, inf, None)
        S = Zh @ W.T
        L, G = self.loss.value_and_grad(S, self.C)
        L, G = self.reducer.mean(L), self.reducer.scale(G, inplace=True)
        value = L + 0.5 * self.alpha_w * W.square().sum() + self.reg.value(theta)
        return JointPoint(z, float(value), float(L), W, Zh, S, G, vjp_fn)

    def gradient(self, pt: JointPoint) -> Tensor:
        """[J_Zᵀ(G W̃) + α_θ BᵀBθ ; vec(Gᵀ Ẑ + α_W W)] (one backward pass)."""
        theta, W = self.unpack(pt.theta)
        if pt.vjp_fn is None:
            pt.vjp_fn = self.features.with_vjp(theta)[1]
        g_theta = self.reducer.sum(pt.vjp_fn(pt.G @ W[:, : self.m])) + self.reg.gradient(theta)
        g_W = self.reducer.sum(pt.G.T @ pt.Zh) + self.alpha_w * W
        return self.pack(g_theta, g_W)

    def gn_operator(self, pt: JointPoint) -> Callable[[Tensor], Tensor]:
        """dz ↦ H_GN dz, coupled or block-diagonal (one JVP + one VJP per product)."""
        theta, W = self.unpack(pt.theta)
        if pt.vjp_fn is None:
            pt.vjp_fn = self.features.with_vjp(theta)[1]
        vjp, jvp = pt.vjp_fn, pt.vjp_fn.jvp  # both through the point's recorded graph
        Wt = W[:, : self.m]
        pad, rsum = self.head.pad, self.reducer.sum
        h = self.loss.scalar_hessian()
        if h is not None and pt.Zh.shape[1] <= 2 * W.shape[0]:
            return self._scalar_hessian_operator(pt, W, self.reducer.scale(h))

        def coupled(v: Tensor) -> Tensor:
            d_theta, dW = self.unpack(v.to(torch.float64))
            dS = pad(jvp(d_theta)) @ W.T + pt.Zh @ dW.T
            U = self._hs(pt, dS)
            out_theta = rsum(vjp(U @ Wt)) + self.reg.gauss_newton(d_theta)
            return self.pack(out_theta, rsum(U.T @ pt.Zh) + self.alpha_w * dW)

        def blockdiag(v: Tensor) -> Tensor:
            d_theta, dW = self.unpack(v.to(torch.float64))
            U_theta = self._hs(pt, pad(jvp(d_theta)) @ W.T)
            out_theta = rsum(vjp(U_theta @ Wt)) + self.reg.gauss_newton(d_theta)
            out_W = rsum(self._hs(pt, pt.Zh @ dW.T).T @ pt.Zh) + self.alpha_w * dW
            return self.pack(out_theta, out_W)

        return coupled if self.coupled else blockdiag

    def _scalar_hessian_operator(self, pt: JointPoint, W: Tensor,
                                 h: float) -> Callable[[Tensor], Tensor]:
        """The same products for H_S = h·I (h: the loss's h scaled by the reducer, h/n) without n×c
        temporaries (A = ẐᵀẐ, K̃ = WᵀW̃; the row sums A, dẐᵀẐ and the θ-pullback through the
        reducer):
        U W̃ = h (dẐ K̃ + Ẑ dWᵀW̃),  Uᵀ Ẑ = h (W dẐᵀẐ + dW A); block-diagonal drops the
        cross terms Ẑ dWᵀW̃ and W dẐᵀẐ."""
        vjp, jvp = pt.vjp_fn, pt.vjp_fn.jvp
        pad, rsum = self.head.pad, self.reducer.sum
        A, hKt = h * rsum(pt.Zh.T @ pt.Zh), h * (W.T @ W[:, : self.m])

        def apply(v: Tensor) -> Tensor:
            d_theta, dW = self.unpack(v.to(torch.float64))
            dZh = pad(jvp(d_theta))
            E = dZh @ hKt
            out_W = dW @ A + self.alpha_w * dW
            if self.coupled:
                E = E + pt.Zh @ (h * (dW.T @ W[:, : self.m]))
                out_W = out_W + W @ (h * rsum(dZh.T @ pt.Zh))
            return self.pack(rsum(vjp(E)) + self.reg.gauss_newton(d_theta), out_W)

        return apply
