"""Losses: closed-form derivatives against autograd, stability, target validation.

The losses return sums over rows (value Σ_i ℓ_i, per-row G and H_S[U]); the averaging over n
samples is gnvpro.reduce.SampleReducer's (tests/test_reduce.py).
"""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, jvp

from gnvpro.losses import (
    CrossEntropyLoss,
    LeastSquaresLoss,
    LogisticLoss,
    Loss,
    make_loss,
)

DT = torch.float64


def _data(name: str, n: int = 13, c: int = 4, scale: float = 1.0, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    loss = make_loss(name)
    if name == "logistic":
        c = 1
    S = scale * torch.randn(n, c, generator=gen, dtype=DT)
    U = torch.randn(n, c, generator=gen, dtype=DT)
    if name == "least_squares":
        y = torch.randn(n, c, generator=gen, dtype=DT)
    elif name == "cross_entropy":
        y = torch.arange(n) % c
    else:
        y = torch.arange(n) % 2
    C = loss.prepare_targets(y, c).to(DT)
    return loss, S, C, U


NAMES = ["least_squares", "cross_entropy", "logistic"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_grad_matches_autograd(name: str, scale: float) -> None:
    loss, S, C, _ = _data(name, scale=scale)
    G_auto = grad(lambda s: loss.value(s, C))(S)
    torch.testing.assert_close(loss.grad(S, C), G_auto, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_hess_apply_matches_jvp_of_grad(name: str, scale: float) -> None:
    loss, S, C, U = _data(name, scale=scale)
    _, HU_auto = jvp(lambda s: loss.grad(s, C), (S,), (U,))
    _, HU_auto2 = jvp(grad(lambda s: loss.value(s, C)), (S,), (U,))
    HU = loss.hess_apply(S, C, U)
    torch.testing.assert_close(HU, HU_auto, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(HU, HU_auto2, rtol=1e-10, atol=1e-14)
    # symmetric and positive semi-definite
    V = torch.randn_like(U)
    assert torch.sum(V * HU) == pytest.approx(float(torch.sum(U * loss.hess_apply(S, C, V))))
    assert float(torch.sum(U * HU)) >= -1e-15


def test_values_by_hand() -> None:
    """value = Σ_i ℓ_i: a sum over the rows, not a mean."""
    S = torch.tensor([[1.0, 2.0, 0.5], [-1.0, 0.0, 3.0]], dtype=DT)
    C = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=DT)
    ce = CrossEntropyLoss().value(S, C)
    expect = (torch.logsumexp(S, 1) - (C * S).sum(1)).sum()
    torch.testing.assert_close(ce, expect, rtol=1e-14, atol=0)
    ls = LeastSquaresLoss().value(S, C)
    assert float(ls) == pytest.approx(0.5 * float(((S - C) ** 2).sum()), rel=1e-14)
    s = torch.tensor([[0.3], [-2.0], [5.0]], dtype=DT)
    c = torch.tensor([[1.0], [0.0], [1.0]], dtype=DT)
    lg = LogisticLoss().value(s, c)
    expect = (torch.log(1 + torch.exp(s)) - c * s).sum()
    torch.testing.assert_close(lg, expect, rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_sums_are_additive_over_rows(name: str) -> None:
    """value, grad and hess_apply of a batch are those of its parts: no hidden 1/n."""
    loss, S, C, U = _data(name, n=13)
    parts = [slice(0, 5), slice(5, 13)]
    total = sum(loss.value(S[i], C[i]) for i in parts)
    torch.testing.assert_close(loss.value(S, C), total, rtol=1e-14, atol=0)
    torch.testing.assert_close(loss.grad(S, C), torch.cat([loss.grad(S[i], C[i]) for i in parts]),
                               rtol=0, atol=0)
    HU = torch.cat([loss.hess_apply(S[i], C[i], U[i]) for i in parts])
    torch.testing.assert_close(loss.hess_apply(S, C, U), HU, rtol=0, atol=0)
    L, G = loss.value_and_grad(S, C)
    torch.testing.assert_close(L, loss.value(S, C), rtol=1e-14, atol=0)
    torch.testing.assert_close(G, loss.grad(S, C), rtol=0, atol=0)


def test_scalar_hessian_is_unnormalised() -> None:
    S = torch.randn(6, 2, dtype=DT)
    U = torch.randn(6, 2, dtype=DT)
    ls = LeastSquaresLoss()
    assert ls.scalar_hessian() == 1.0
    torch.testing.assert_close(ls.hess_apply(S, torch.zeros_like(S), U), U, rtol=0, atol=0)
    assert CrossEntropyLoss().scalar_hessian() is None
    assert LogisticLoss().scalar_hessian() is None


@pytest.mark.parametrize("name", ["cross_entropy", "logistic"])
def test_stable_for_large_predictions(name: str) -> None:
    loss, S, C, U = _data(name, n=8)
    S = 1e3 * torch.sign(S)
    S[0] = 1e3 * torch.arange(S.shape[1], dtype=DT)  # huge spread within a row
    for t in (loss.value(S, C), loss.grad(S, C), loss.hess_apply(S, C, U)):
        assert torch.isfinite(t).all()
    # exact values: each sample contributes max(0, margin) up to e^{-1000}
    if name == "logistic":
        s = torch.tensor([[1e3], [-1e3], [1e3], [-1e3]], dtype=DT)
        c = torch.tensor([[1.0], [0.0], [0.0], [1.0]], dtype=DT)
        assert float(loss.value(s, c)) == pytest.approx(2e3, rel=1e-15)
        torch.testing.assert_close(
            loss.grad(s, c), torch.tensor([[0.0], [0], [1.0], [-1.0]]).to(DT)
        )
        assert float(loss.hess_apply(s, c, torch.ones_like(s)).abs().max()) < 1e-300
        s = torch.tensor([[40.0]], dtype=DT)  # log(1+e^40) - 40 = e^-40, not rounded to 0
        assert float(loss.value(s, torch.ones_like(s))) == pytest.approx(4.248354255291589e-18)
    else:
        s = torch.tensor([[1e3, -1e3, 0.0], [1e3, 999.0, -1e3]], dtype=DT)
        c = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=DT)
        expect = 0.0 + float(torch.log1p(torch.exp(torch.tensor(1.0, dtype=DT))))
        assert float(loss.value(s, c)) == pytest.approx(expect, rel=1e-14)


def test_one_hot_and_index_labels_agree() -> None:
    loss = CrossEntropyLoss()
    y = torch.tensor([0, 2, 1, 2, 0])
    C_idx = loss.prepare_targets(y, 3)
    C_hot = loss.prepare_targets(torch.nn.functional.one_hot(y, 3).to(DT), 3)
    torch.testing.assert_close(C_idx.to(DT), C_hot)
    S = torch.randn(5, 3, dtype=DT)
    assert float(loss.value(S, C_idx.to(DT))) == float(loss.value(S, C_hot))
    torch.testing.assert_close(loss.grad(S, C_idx.to(DT)), loss.grad(S, C_hot))
    assert C_idx.dtype.is_floating_point and C_idx.shape == (5, 3)


def test_prepare_targets_shapes_and_types() -> None:
    ls = LeastSquaresLoss()
    assert ls.prepare_targets(torch.arange(4.0)).shape == (4, 1)
    assert ls.prepare_targets(torch.arange(4)).dtype == torch.get_default_dtype()
    assert ls.prepare_targets(torch.zeros(4, 3, dtype=DT), 3).dtype == DT
    lg = LogisticLoss()
    for y in (
        torch.tensor([0, 1, 1]),
        torch.tensor([[0.0], [1.0], [1.0]]),
        torch.tensor([0, 1, 1]).bool(),
    ):
        C = lg.prepare_targets(y)
        assert C.shape == (3, 1) and C.dtype.is_floating_point
        assert C.reshape(-1).tolist() == [0.0, 1.0, 1.0]
    ce = CrossEntropyLoss()
    assert ce.prepare_targets(torch.tensor([0.0, 1.0, 2.0]), 4).shape == (3, 4)  # whole floats ok


@pytest.mark.parametrize(
    ("loss", "y", "n_outputs", "match"),
    [
        # wrong ndim / shape
        (LeastSquaresLoss(), torch.zeros(3, 2, 2), None, r"shape \(n, c\) or \(n,\)"),
        (LeastSquaresLoss(), torch.zeros(3, 2), 3, r"2 column\(s\) but n_outputs=3"),
        (CrossEntropyLoss(), torch.zeros(3, 2, 2, dtype=torch.int64), 2, r"shape \(n,\)"),
        (CrossEntropyLoss(), torch.tensor([[0], [1]]), 3, r"y\.reshape\(-1\)"),
        (CrossEntropyLoss(), torch.eye(3), 4, r"3 columns but n_outputs=4"),
        (CrossEntropyLoss(), torch.tensor([0, 1]), None, "pass n_outputs=c"),
        (LogisticLoss(), torch.zeros(3, 2), None, r"shape \(n,\) or \(n, 1\)"),
        (LogisticLoss(), torch.tensor([0, 1]), 3, "use the cross_entropy loss"),
        # NaN / Inf
        (LeastSquaresLoss(), torch.tensor([1.0, float("nan")]), None, "NaN/Inf"),
        (CrossEntropyLoss(), torch.tensor([0.0, float("inf"), 1.0]), 3, "NaN/Inf"),
        (LogisticLoss(), torch.tensor([0.0, float("nan"), 1.0]), None, "NaN/Inf"),
        # out of range: range found and expected
        (CrossEntropyLoss(), torch.tensor([0, 1, 3]), 3, r"\[0, 3\).*range over \[0, 3\]"),
        (CrossEntropyLoss(), torch.tensor([-1, 0, 1]), 3, r"\[0, 3\).*range over \[-1, 1\]"),
        (LogisticLoss(), torch.tensor([0, 1, 2]), None, r"expected range \[0, 1\].*\[0, 2\]"),
        (LogisticLoss(), torch.tensor([-1, 1, 1]), None, r"\(y \+ 1\) / 2"),
        # non-integer float labels
        (CrossEntropyLoss(), torch.tensor([0.0, 1.5, 2.0]), 3, "not whole numbers"),
        (LogisticLoss(), torch.tensor([0.0, 0.3, 1.0]), None, "not whole numbers"),
        # a single class
        (CrossEntropyLoss(), torch.tensor([2, 2, 2]), 3, "at least two classes"),
        (CrossEntropyLoss(), torch.tensor([[0.0, 1.0]] * 3), 2, "at least two classes"),
        (LogisticLoss(), torch.tensor([1, 1, 1]), None, "at least two classes"),
        # one-hot rows
        (
            CrossEntropyLoss(),
            torch.tensor([[1.0, 1.0], [0.0, 1.0]]),
            2,
            r"sum to 1.*row 0 sums to 2",
        ),
        (CrossEntropyLoss(), torch.tensor([[0.0, 0.0], [1.0, 0.0]]), 2, r"row 0 sums to 0"),
        (CrossEntropyLoss(), torch.tensor([[0.5, 0.5], [1.0, 0.0]]), 2, "only 0 and 1"),
        # empty
        (LogisticLoss(), torch.zeros(0), None, "empty"),
    ],
)
def test_prepare_targets_errors(
    loss: Loss, y: torch.Tensor, n_outputs: int | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        loss.prepare_targets(y, n_outputs)


def test_make_loss_and_labels() -> None:
    assert isinstance(make_loss("least_squares"), LeastSquaresLoss)
    assert isinstance(make_loss("Cross-Entropy"), CrossEntropyLoss)
    lg = make_loss("logistic")
    assert lg.classification and not lg.is_quadratic and lg.name == "logistic"
    assert make_loss("least_squares").is_quadratic
    with pytest.raises(ValueError, match="least_squares, cross_entropy, logistic"):
        make_loss("hinge")
    S = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])
    assert make_loss("cross_entropy").predict_labels(S).tolist() == [1, 0]
    assert lg.predict_labels(torch.tensor([[0.5], [-0.2], [0.0]])).tolist() == [1, 0, 0]
    with pytest.raises(TypeError):
        make_loss("least_squares").predict_labels(S)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="same shape|shape \\(n, c\\)"):
        CrossEntropyLoss().value(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="one output column"):
        LogisticLoss().grad(torch.zeros(3, 2), torch.zeros(3, 2))


@pytest.mark.parametrize("name", ["least_squares", "cross_entropy", "logistic"])
def test_hessian_factors_reproduce_hess_apply(name):
    """H_i = diag(d_i) − u_i u_iᵀ: the factors the inner Newton solver builds H_W from."""
    loss, S, C, U = _data(name)
    D, V = loss.hessian_factors(S)
    HU = D * U if V is None else D * U - V * (V * U).sum(1, keepdim=True)
    assert torch.allclose(HU, loss.hess_apply(S, C, U), rtol=1e-13, atol=1e-15)
