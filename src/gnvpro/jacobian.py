"""The VarPro Jacobian at one point of Φ_red (gnvpro.varpro): J_S dθ = dẐ Wᵀ + Ẑ dWᵀ with
dW = −H_W⁻¹ B_Z[dZ] (the full Golub-Pereyra Jacobian; Kaufman's drops dW), J_W = dW*/dθ, their
adjoint J_Sᵀ X + J_Wᵀ R = J_Zᵀ [X W − H_S[Ẑ Yᵀ] W − G Y]_{:, :m} with Y = H_W⁻¹(XᵀẐ + R), and
the Gauss-Newton product H_GN v = J_Sᵀ H_S[J_S v] + α_W J_Wᵀ J_W v + α_θ BᵀB v.
Notation as in gnvpro.varpro; reference: docs/method.md section 2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .varpro import Point, ReducedObjective

__all__ = ["VarProJacobian", "accumulate", "gram_path_pays"]


def gram_path_pays(h: float | None, Zh: Tensor, W: Tensor) -> bool:
    """Whether a least-squares (H_S = h·I) product should use the W-side Gram identities:
    O(n p² + n c p) flops against 9 n c p, so when the features are not much wider than the
    outputs (p ≤ 2c)."""
    return h is not None and Zh.shape[1] <= 2 * W.shape[0]


def accumulate(parts: Iterable[Tensor]) -> Tensor:
    """Σ_k parts_k, left to right (one part: itself, the unchunked value bit for bit)."""
    total = None
    for t in parts:
        total = t if total is None else total + t
    assert total is not None
    return total


class VarProJacobian:
    """J_S (predictions) and J_W (= dW*/dθ) at one point, their adjoints, and H_GN.

    Every product runs over the objective's chunks: a first pass forms dẐ_k = [J_Z v]_k and the
    row sums that dW needs, later passes the per-chunk terms and Σ_k J_Zᵀ E_k.
    """

    def __init__(self, obj: ReducedObjective, pt: Point) -> None:
        self.obj, self.pt = obj, pt
        if obj.keeps:
            for k in range(obj.n_chunks):
                obj.linearisation(pt, k)
        self.m = obj.head.m
        self._pad, self._sum = obj.head.pad, obj.reducer.sum
        self._h_raw = obj.loss.scalar_hessian()
        self._h = None if self._h_raw is None else obj.reducer.scale(self._h_raw)  # (h/n)·I
        self._hK: Tensor | None = None
        self._factors: dict[int, tuple[Tensor, Tensor | None] | None] = {}

    def _hs(self, k: int, U: Tensor) -> Tensor:
        """H_S[U] on chunk k: the loss's per-row H_i u_i, divided by n."""
        obj = self.obj
        if self._h_raw is not None:  # H_i = h·I: no need of S
            return obj.reducer.scale(U if self._h_raw == 1.0 else self._h_raw * U)
        if obj.keeps and k not in self._factors:  # H_i = diag(d_i) − u_i u_iᵀ, once per point
            self._factors[k] = obj.loss.hessian_factors(obj.chunk_SG(self.pt, k)[0])
        f = self._factors.get(k)
        if f is None:  # recomputed per product (memory="recompute"), or a loss without factors
            S = obj.chunk_SG(self.pt, k)[0]
            return obj.reducer.scale(obj.loss.hess_apply(S, obj.rows(obj.C, k), U))
        d, u = f
        DU = d * U
        return obj.reducer.scale(DU if u is None else DU - u * (u * U).sum(dim=1, keepdim=True))

    def loss_hessian(self, U: Tensor) -> Tensor:
        """H_S[U] for U ∈ R^{n×c} (all rows), chunk by chunk."""
        obj = self.obj
        parts = [self._hs(k, obj.rows(U, k)) for k in range(obj.n_chunks)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _dZh(self, v: Tensor) -> list[Tensor]:
        """dẐ_k = [J_Z v, 0] on every chunk."""
        return [self._pad(self.obj.chunk_jvp(self.pt, k)(v)) for k in range(self.obj.n_chunks)]

    def _pullback(self, E: Callable[[int], Tensor]) -> Tensor:
        """Σ_k J_Zᵀ E_k (reduced), E_k ∈ R^{n_k×p} given per chunk (only its first m columns)."""
        obj = self.obj
        return self._sum(accumulate(obj.linearisation(self.pt, k)(E(k)[:, : self.m])
                                     for k in range(obj.n_chunks)))

    def _dW(self, dZh: list[Tensor]) -> Tensor:
        """dW = −H_W⁻¹ Σ_k (H_S[dẐ_k Wᵀ]ᵀ Ẑ_k + G_kᵀ dẐ_k)."""
        obj, pt = self.obj, self.pt
        BZ = accumulate(self._hs(k, d @ pt.W.T).T @ obj.rows(pt.Zh, k)
                         + obj.chunk_SG(pt, k)[1].T @ d for k, d in enumerate(dZh))
        return -pt.inner.hess_inv(self._sum(BZ))

    def forward(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """(J_S v, J_W v) = (dẐ Wᵀ + Ẑ dWᵀ, dW) for a flat direction v (J_S v: n×c)."""
        pt = self.pt
        dZh = self._dZh(v)
        dS = torch.cat([d @ pt.W.T for d in dZh]) if len(dZh) > 1 else dZh[0] @ pt.W.T
        if self.obj.kaufman:
            return dS, torch.zeros_like(pt.W)
        dW = self._dW(dZh)
        return dS + pt.Zh @ dW.T, dW

    def _adjoint_E(self, k: int, X: Tensor, Y: Tensor | None) -> Tensor:
        """E_k = X_k W − H_S[Ẑ_k Yᵀ] W − G_k Y (E_k = X_k W for Kaufman's Jacobian)."""
        obj, pt = self.obj, self.pt
        E = X @ pt.W
        if Y is not None:
            E = E - self._hs(k, obj.rows(pt.Zh, k) @ Y.T) @ pt.W - obj.chunk_SG(pt, k)[1] @ Y
        return E

    def _adjoint_Y(self, XZ: Tensor, R: Tensor | None) -> Tensor:
        """Y = H_W⁻¹(Σ_k X_kᵀẐ_k + R)."""
        XZ = self._sum(XZ)
        return self.pt.inner.hess_inv(XZ if R is None else XZ + R)

    def adjoint(self, X: Tensor, R: Tensor | None = None) -> Tensor:
        """J_Sᵀ X + J_Wᵀ R (flat float64), X ∈ R^{n×c}, R ∈ R^{c×p}."""
        obj, pt = self.obj, self.pt
        Y = None
        if not obj.kaufman:
            Y = self._adjoint_Y(accumulate(obj.rows(X, k).T @ obj.rows(pt.Zh, k)
                                            for k in range(obj.n_chunks)), R)
        return self._pullback(lambda k: self._adjoint_E(k, obj.rows(X, k), Y))

    def gauss_newton(self, v: Tensor) -> Tensor:
        """H_GN v = J_Sᵀ H_S[J_S v] + α_W J_Wᵀ J_W v + α_θ BᵀB v (one JVP + one VJP per chunk;
        no n×c array beyond one chunk's unless the point keeps them).

        With dS = dẐ Wᵀ, A = H_S[dS], Q = H_W⁻¹(Aᵀ Ẑ), M = H_W⁻¹(Gᵀ dẐ): dW = −Q − M, and since
        H_W dW = H_S[Ẑ dWᵀ]ᵀ Ẑ + α_W dW the adjoint's Y = H_W⁻¹(H_S[J_S v]ᵀ Ẑ + α_W dW) = −M, so
            E = H_S[dS + Ẑ (dW − Y)ᵀ] W − G Y = (A − H_S[Ẑ Qᵀ]) W + G M,
            H_GN v = J_Zᵀ E[:, :m] + α_θ BᵀB v:
        two H_S applications and two H_W⁻¹ solves (forward-then-adjoint takes three and two).
        Without α_W J_Wᵀ J_W (gn_alpha_w=False) Y gains α_W H_W⁻¹(Q + M); Kaufman's Jacobian
        (dW = 0) gives E = A W."""
        if gram_path_pays(self._h, self.pt.Zh, self.pt.W):
            return self._gauss_newton_scalar_hessian(v, self._h)
        obj, pt = self.obj, self.pt
        dZh = self._dZh(v)

        def a(k: int) -> Tensor:  # A_k = H_S[dẐ_k Wᵀ]
            return self._hs(k, dZh[k] @ pt.W.T)

        kept = [a(k) for k in range(obj.n_chunks)] if obj.keeps else None

        def A(k: int) -> Tensor:  # formed once when the point keeps n×c arrays, else per pass
            return kept[k] if kept is not None else a(k)

        if obj.kaufman:
            return self._pullback(lambda k: A(k) @ pt.W) + obj.reg.gauss_newton(v)
        AZ, GdZ = obj.reducer.sums(  # Aᵀ Ẑ and Gᵀ dẐ: one reduction for both
            accumulate(A(k).T @ obj.rows(pt.Zh, k) for k in range(obj.n_chunks)),
            accumulate(obj.chunk_SG(pt, k)[1].T @ d for k, d in enumerate(dZh)))
        Q, M = pt.inner.hess_inv(AZ), pt.inner.hess_inv(GdZ)
        D, Y = -Q, -M  # dW − Y and Y
        if not obj.gn_alpha_w and obj.alpha_w > 0:
            extra = obj.alpha_w * pt.inner.hess_inv(Q + M)
            D, Y = D - extra, Y + extra

        def E(k: int) -> Tensor:
            HD = self._hs(k, obj.rows(pt.Zh, k) @ D.T)
            return (A(k) + HD) @ pt.W - obj.chunk_SG(pt, k)[1] @ Y

        return self._pullback(E) + obj.reg.gauss_newton(v)

    def _gauss_newton_scalar_hessian(self, v: Tensor, h: float) -> Tensor:
        """H_GN v when H_S = h·I (least squares), without any n×c temporary.

        With K = WᵀW (once per point), P = Ẑᵀ dẐ and H_W = h ẐᵀẐ + α_W I (h includes the 1/n,
        the row sums P and Gᵀ dẐ and the θ-pullback go through the reducer):
            Q = H_W⁻¹(h W Pᵀ),  M = H_W⁻¹(Gᵀ dẐ),  dW = −Q − M,
            Y = H_W⁻¹(h (W Pᵀ + dW ẐᵀẐ) + α_W dW) = dW + Q = −M   (α_W J_Wᵀ J_W included),
            E = h dẐ K + h Ẑ (dW − Y)ᵀ W − G Y = h dẐ K − h Ẑ Qᵀ W + G M,
            H_GN v = J_Zᵀ E[:, :m] + α_θ BᵀB v:
        forward/adjoint's product without n×c arrays (chosen by `gram_path_pays`); the sums over
        rows accumulate chunk by chunk. Without α_W J_Wᵀ J_W (gn_alpha_w=False) Y gains
        −α_W H_W⁻¹ dW = α_W H_W⁻¹(Q + M).
        """
        pt, obj = self.pt, self.obj
        if self._hK is None:
            self._hK = h * (pt.W.T @ pt.W)
        dZh = self._dZh(v)
        G = [obj.chunk_SG(pt, k)[1] for k in range(obj.n_chunks)] if obj.keeps else None
        D = Y = None
        if not obj.kaufman:
            P, GdZ = obj.reducer.sums(  # Ẑᵀ dẐ and Gᵀ dẐ: one reduction for both
                accumulate(d.T @ obj.rows(pt.Zh, k) for k, d in enumerate(dZh)),
                accumulate((G[k] if G else obj.chunk_SG(pt, k)[1]).T @ d
                            for k, d in enumerate(dZh)))
            Q = pt.inner.hess_inv(pt.W @ (h * P))
            M = pt.inner.hess_inv(GdZ)
            D, Y = -Q, -M  # dW − Y and Y
            if not obj.gn_alpha_w and obj.alpha_w > 0:
                extra = obj.alpha_w * pt.inner.hess_inv(Q + M)
                D, Y = D - extra, Y + extra

        def E(k: int) -> Tensor:
            Ek = dZh[k] @ self._hK
            if D is None:
                return Ek
            Gk = G[k] if G else obj.chunk_SG(pt, k)[1]
            return Ek + obj.rows(pt.Zh, k) @ (h * (D.T @ pt.W)) - Gk @ Y

        return self._pullback(E) + obj.reg.gauss_newton(v)
