"""The Hessian H_W of the inner problem Φ(W) = L(Ẑ Wᵀ, C)/n + (α_W/2)‖W‖_F² (gnvpro.inner.newton):
matrix-free products and the dense (c·p) × (c·p) matrix.

H_W[V] = H_S[Ẑ Vᵀ]ᵀ Ẑ / n + α_W V = Σ_i H_i ⊗ ẑ_i ẑ_iᵀ / n + α_W I with the per-row Hessians
H_i = diag(d_i) − u_i u_iᵀ of the loss (Loss.hessian_factors); vec(W) = W.reshape(-1), entry
(k, j) at k·p + j. Every sum over samples goes through the SampleReducer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from gnvpro.losses import Loss
from gnvpro.reduce import SampleReducer

__all__ = ["hessian_apply", "hessian_operator", "dense_hessian"]

_PAIR_MIN_C, _PAIR_MAX_P = 6, 64  # H_W from its distinct entries for c ≥ 6 and p ≤ 64
_PAIR_CHUNK_ELEMS = 2**22  # rows of Q = [ẑ_ia ẑ_ib]_{a≤b} formed at once: ≤ 4M entries


def hessian_apply(
    loss: Loss,
    S: Tensor,
    C: Tensor,
    Zh: Tensor,
    V: Tensor,
    alpha_w: float,
    reducer: SampleReducer,
) -> Tensor:
    """H_W[V] = H_S[Ẑ Vᵀ]ᵀ Ẑ / n + α_W V, matrix-free, for V of shape (c, p); S = Ẑ Wᵀ.

    Computed in the inputs' dtype (no cast); V may also be the flat (c·p,) vector.
    """
    Vm = V.reshape(S.shape[1], Zh.shape[1])
    HU = reducer.scale(loss.hess_apply(S, C, Zh @ Vm.T))
    out = reducer.sum(HU.T @ Zh) + alpha_w * Vm
    return out.reshape(V.shape)


def hessian_operator(
    loss: Loss, S: Tensor, C: Tensor, Zh: Tensor, alpha_w: float, reducer: SampleReducer
) -> Callable[[Tensor], Tensor]:
    """V ↦ H_W[V] = reducer.mean(H_S[Ẑ Vᵀ]ᵀ Ẑ) + α_W V at S (hessian_apply) with the loss's
    Hessian factors taken once: H_S[U]_i = d_i ∘ u_i − f_i (f_iᵀ u_i), H_i = diag(d_i) − f_i f_iᵀ
    (cross-entropy, f = d = p: p_i ∘ (u_i − p_iᵀ u_i))."""
    factors = loss.hessian_factors(S)
    if factors is None:
        return lambda V: hessian_apply(loss, S, C, Zh, V, alpha_w, reducer)
    D, F = factors

    def apply(V: Tensor) -> Tensor:
        Vm = V.reshape(S.shape[1], Zh.shape[1])
        U = Zh @ Vm.T
        if F is None:
            HU = D * U
        elif F is D:  # cross-entropy: p ∘ (u − pᵀu)
            HU = D * (U - (D * U).sum(dim=1, keepdim=True))
        else:
            HU = D * U - F * (F * U).sum(dim=1, keepdim=True)
        out = torch.add(reducer.mean(HU.T @ Zh), Vm, alpha=alpha_w)
        return out.reshape(V.shape)

    return apply


def dense_hessian(
    loss: Loss, S: Tensor, C: Tensor, Zh: Tensor, alpha_w: float, reducer: SampleReducer
) -> Tensor:
    """The (c·p) × (c·p) matrix of H_W at S = Ẑ Wᵀ, rows/columns ordered as W.reshape(-1).

    From the loss's Hessian factors (Loss.hessian_factors: H_i = diag(d_i) − u_i u_iᵀ):
    H_W = Σ_i H_i ⊗ ẑ_i ẑ_iᵀ / n + α_W I (the /n is reducer.mean). Diagonal H_i (least squares
    d = 1, logistic d = σ(1−σ)): the c blocks Ẑᵀ diag(d_k) Ẑ/n. Otherwise (cross-entropy,
    d = u = softmax) the blocks k ≤ l only: for c ≥ 6 and p ≤ 64 from the distinct entries,
    block (k, l) entry (a, b) with a ≤ b being R[(a, b), (k, l)] of R = Q Aᵀ,
    Q = [ẑ_ia ẑ_ib]_{(a≤b), i}, A = [δ_kl d_ik − u_ik u_il]_{(k≤l), i} (``_pair_hessian``: a
    quarter of the flops of MᵀM, M = [Ẑ∘u_1, …, Ẑ∘u_c]), otherwise one product
    Ẑᵀ diag(δ_kl d_k − u_k∘u_l) Ẑ per block (``_blockwise_hessian``). A loss without factors:
    H_W applied to the unit vectors.
    """
    n, p = Zh.shape
    c = S.shape[1]
    N = c * p
    dt, dev = Zh.dtype, Zh.device
    factors = loss.hessian_factors(S)
    if factors is None:
        eye = torch.eye(N, dtype=dt, device=dev)
        H = torch.stack(
            [hessian_apply(loss, S, C, Zh, eye[i], 0.0, reducer) for i in range(N)], dim=1
        )
        H = 0.5 * (H + H.T)
    elif factors[1] is None:
        D = factors[0]
        H = torch.zeros(N, N, dtype=dt, device=dev)
        for k in range(c):
            H[k * p : (k + 1) * p, k * p : (k + 1) * p] = (Zh * D[:, k : k + 1]).T @ Zh
        H = reducer.mean(H, inplace=True)
        H = 0.5 * (H + H.T)
    elif c >= _PAIR_MIN_C and p <= _PAIR_MAX_P:
        H = _pair_hessian(factors[0], factors[1], Zh, reducer)
    else:
        H = _blockwise_hessian(factors[0], factors[1], Zh, reducer)
    H.diagonal().add_(alpha_w)
    return H


def _blockwise_hessian(D: Tensor, U: Tensor, Zh: Tensor, reducer: SampleReducer) -> Tensor:
    """Σ_i (diag d_i − u_i u_iᵀ) ⊗ ẑ_i ẑ_iᵀ / n as the dense (c·p)² matrix, one block per k ≤ l:
    H_kl = H_lkᵀ = Ẑᵀ diag(δ_kl d_k − u_k ∘ u_l) Ẑ / n (the mean by the reducer), symmetrised."""
    p = Zh.shape[1]
    c = D.shape[1]
    H = torch.empty(c * p, c * p, dtype=Zh.dtype, device=Zh.device)
    for k in range(c):
        for m in range(k, c):
            w = -U[:, k] * U[:, m]
            if m == k:
                w += D[:, k]
            B = (Zh * w[:, None]).T @ Zh
            H[k * p : (k + 1) * p, m * p : (m + 1) * p] = B
            if m != k:
                H[m * p : (m + 1) * p, k * p : (k + 1) * p] = B.T
    H = reducer.mean(H, inplace=True)
    return 0.5 * (H + H.T)


@functools.lru_cache(maxsize=4)
def _pair_index(c: int, p: int, device: torch.device) -> Tensor:
    """The (c·p)² gather index of H_W from R ∈ R^{p(p+1)/2 × c(c+1)/2}: entry (k·p + a, l·p + b)
    ↦ flat position of R[(min(a, b), max(a, b)), (min(k, l), max(k, l))], pairs numbered in
    row-major upper-triangle order (torch.triu_indices); both triangles read the same entry."""

    def pair_pos(q: int) -> Tensor:
        i, j = torch.triu_indices(q, q, device=device)
        pos = torch.zeros(q, q, dtype=torch.int64, device=device)
        pos[i, j] = torch.arange(i.shape[0], device=device)
        return torch.maximum(pos, pos.T)

    tpos, spos = pair_pos(p), pair_pos(c)
    idx = tpos[None, :, None, :] * (c * (c + 1) // 2) + spos[:, None, :, None]
    return idx.reshape(c * p, c * p)


def _pair_products(X: Tensor) -> Tensor:
    """[x_a ∘ x_b]_{a ≤ b} for the rows x_a of X (q, n): (q(q+1)/2, n), triu_indices order."""
    return torch.cat([X[a:] * X[a] for a in range(X.shape[0])], dim=0)


def _pair_hessian(D: Tensor, U: Tensor, Zh: Tensor, reducer: SampleReducer) -> Tensor:
    """Σ_i (diag d_i − u_i u_iᵀ) ⊗ ẑ_i ẑ_iᵀ / n as the dense (c·p)² matrix, from its distinct
    entries R = Q Aᵀ, Q = [ẑ_ia ẑ_ib]_{a≤b} and A = [δ_kl d_ik − u_ik u_il]_{k≤l} (pairs × samples,
    in sample chunks of Q with ≤ 2^22 entries); reducer.mean is taken of R, before the gather."""
    n, p = Zh.shape
    c = D.shape[1]
    T = p * (p + 1) // 2
    Zt, Ut = Zh.T, U.T
    run = torch.arange(c, 0, -1, device=Zh.device)
    on_diag = torch.cumsum(run, 0) - run  # positions of the pairs (k, k)
    R = torch.zeros(T, c * (c + 1) // 2, dtype=Zh.dtype, device=Zh.device)
    cols = max(1, _PAIR_CHUNK_ELEMS // T)
    for i0 in range(0, n, cols):
        A = -_pair_products(Ut[:, i0 : i0 + cols])
        A[on_diag] += D[i0 : i0 + cols].T
        R += _pair_products(Zt[:, i0 : i0 + cols]) @ A.T
    R = reducer.mean(R, inplace=True)
    return R.reshape(-1)[_pair_index(c, p, Zh.device)]
