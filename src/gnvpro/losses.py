"""Loss functions L(S, C) = Σ_i ℓ(s_i, c_i) of the predictions S = Ẑ Wᵀ ∈ R^{n×c} (rows are
samples).

A loss returns SUMS over the rows it sees and never divides by n: the objective's average
(1/n) Σ_i ℓ_i over the n samples (docs/method.md, section 1) is taken by
gnvpro.reduce.SampleReducer, the one place that knows n (and, later, the other processes'
rows). Each loss provides its value, the per-row gradient G = ∂L/∂S (row i: ∂ℓ_i/∂s_i) and
the per-row Hessian action H_S[U] (row i: H_i u_i), everything in closed form so that the
variable-projection machinery never differentiates through the loss with autograd:

- least squares:  L = ½ ‖S − C‖_F²,                       G = S − C,  H_S[U] = U
- cross-entropy:  L = Σ_i [−c_iᵀ s_i + logsumexp(s_i)],     G = P − C,
                  H_S[U]_i = (diag p_i − p_i p_iᵀ) u_i,      P = softmax(S) row-wise
- logistic:       L = Σ_i [log(1 + e^{s_i}) − c_i s_i],      G = σ − C,
                  H_S[U] = σ(1 − σ) ∘ U,                    σ = sigmoid(S), c = 1

Targets C are float (n, c): real values (least squares), one-hot rows (cross-entropy), 0/1 in a
single column (logistic). ``Loss.prepare_targets`` converts and validates user targets.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "Loss",
    "LeastSquaresLoss",
    "CrossEntropyLoss",
    "LogisticLoss",
    "make_loss",
    "LOSS_NAMES",
]


def _check_pair(S: Tensor, C: Tensor) -> None:
    """Check that S and C are (n, c) tensors of the same shape with n ≥ 1."""
    if S.ndim != 2 or S.shape != C.shape:
        raise ValueError(
            f"predictions S and targets C must both have shape (n, c); got S {tuple(S.shape)} "
            f"and C {tuple(C.shape)} (convert targets with loss.prepare_targets first)"
        )
    if S.shape[0] == 0:
        raise ValueError("the loss of an empty batch (n = 0) is undefined")


def _float_dtype(y: Tensor) -> torch.dtype:
    return y.dtype if y.is_floating_point() else torch.get_default_dtype()


def _check_finite(y: Tensor, what: str) -> None:
    if y.is_floating_point() and not bool(torch.isfinite(y).all()):
        bad = int((~torch.isfinite(y)).sum())
        raise ValueError(
            f"{what} contain {bad} NaN/Inf value(s); remove or impute those samples before training"
        )


def _check_not_empty(y: Tensor, what: str) -> None:
    if y.numel() == 0 or y.shape[0] == 0:
        raise ValueError(f"{what} are empty (n = 0); at least one training sample is needed")


def _check_integer_valued(y: Tensor, what: str) -> None:
    if y.is_floating_point() and not bool((y == torch.round(y)).all()):
        raise ValueError(
            f"{what} must be integer class labels, but some float values are not whole numbers "
            f"(e.g. {float(y[y != torch.round(y)][0])}); pass integer labels (torch.int64)"
        )


def _softmax(S: Tensor) -> Tensor:
    """Row-wise softmax exp(s_i − max s_i) / Σ exp(·) (several times faster than torch.softmax
    for a few columns on the CPU)."""
    E = torch.exp(S - S.amax(dim=1, keepdim=True))
    return E / E.sum(dim=1, keepdim=True)


class Loss(ABC):
    """A convex loss L(S, C) = Σ_i ℓ(s_i, c_i) of the predictions S ∈ R^{n×c}: a sum over rows.

    Nothing here divides by n; gnvpro.reduce.SampleReducer averages (``mean`` of the value,
    ``scale`` of the per-row G and H_S[U]).

    Attributes:
        name: registry name ("least_squares", "cross_entropy", "logistic").
        is_quadratic: True when L is quadratic in S (the inner problem then has a closed form).
        classification: True for the classifiers (they provide ``predict_labels``).
    """

    name: str = ""
    is_quadratic: bool = False
    classification: bool = False

    @abstractmethod
    def prepare_targets(self, y: Tensor, n_outputs: int | None = None,
                        check_classes: bool = True) -> Tensor:
        """Validate user targets y and return float targets C of shape (n, c) on y's device
        (check_classes=False: a classifier's targets may hold one class, checked later over
        every process's rows by :meth:`check_classes`)."""

    def class_counts(self, C: Tensor) -> Tensor | None:
        """Rows per class of targets C (None: not a classifier)."""
        return None

    def check_classes(self, C: Tensor, total: Callable[[Tensor], Tensor] | None = None) -> None:
        """Refuse a classifier's targets in which fewer than two classes occur, counted after
        ``total`` (a SampleReducer's sum: over every process's rows; None: these rows)."""
        counts = self.class_counts(C)
        if counts is None:
            return
        counts = total(counts) if total is not None else counts
        present = torch.nonzero(counts > 0).reshape(-1)
        if present.numel() < 2:
            which = f" ({int(present[0])})" if present.numel() else ""
            raise ValueError(
                f"only one class{which} is present in the training labels; variable projection "
                f"of a classifier needs at least two classes in the training set"
            )

    @abstractmethod
    def value(self, S: Tensor, C: Tensor) -> Tensor:
        """L(S, C) = Σ_i ℓ(s_i, c_i) (a sum over the rows, not a mean) as a 0-d tensor."""

    @abstractmethod
    def grad(self, S: Tensor, C: Tensor) -> Tensor:
        """G = ∂L/∂S, shape (n, c): row i is ∂ℓ_i/∂s_i."""

    @abstractmethod
    def hess_apply(self, S: Tensor, C: Tensor, U: Tensor) -> Tensor:
        """H_S[U]: the Hessian of L in S applied to U (n, c); row i is H_i u_i with
        H_i = ∂²ℓ_i/∂s_i². May return U itself (least squares)."""

    def value_and_grad(self, S: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
        """(L(S, C), G) together (a loss may share the work between them). G is a new tensor
        that the caller owns (it may scale it in place)."""
        return self.value(S, C), self.grad(S, C)

    def hessian_factors(self, S: Tensor) -> tuple[Tensor, Tensor | None] | None:
        """(D, U) with the Hessian of ℓ_i in s_i equal to diag(d_i) − u_i u_iᵀ (U None:
        diagonal), or None when the loss does not say: the inner Newton solver then forms H_W
        column by column and runs CG without a preconditioner."""
        return None

    def scalar_hessian(self) -> float | None:
        """h when H_S[U] = h·U for every S (the GN product then needs no n×c temporary);
        unnormalised: the objective's h/n is SampleReducer.scale(h)."""
        return None

    def predict_labels(self, S: Tensor) -> Tensor:
        """Predicted labels (classifiers only): int64 tensor of shape (n,)."""
        raise TypeError(f"the {self.name} loss is not a classification loss; it has no labels")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LeastSquaresLoss(Loss):
    """L = ½ ‖S − C‖_F²,  G = S − C,  H_S[U] = U."""

    name = "least_squares"
    is_quadratic = True
    classification = False

    def prepare_targets(self, y: Tensor, n_outputs: int | None = None,
                        check_classes: bool = True) -> Tensor:
        """Float targets (n, c), or (n,) -> (n, 1). Integer/bool inputs are cast to float."""
        if not isinstance(y, Tensor):
            raise ValueError(f"targets must be a torch.Tensor, got {type(y).__name__}")
        if y.is_complex():
            raise ValueError("least-squares targets must be real, got a complex tensor")
        if y.ndim == 1:
            y = y.reshape(-1, 1)
        if y.ndim != 2:
            raise ValueError(
                f"least-squares targets must have shape (n, c) or (n,); got {tuple(y.shape)} "
                f"(flatten the trailing dimensions with y.reshape(len(y), -1))"
            )
        _check_not_empty(y, "least-squares targets")
        _check_finite(y, "least-squares targets")
        if n_outputs is not None and y.shape[1] != n_outputs:
            raise ValueError(
                f"least-squares targets have {y.shape[1]} column(s) but n_outputs={n_outputs}; "
                f"make the network's output size match the target columns"
            )
        return y.to(_float_dtype(y))

    def value(self, S: Tensor, C: Tensor) -> Tensor:
        _check_pair(S, C)
        return 0.5 * (S - C).square().sum()

    def grad(self, S: Tensor, C: Tensor) -> Tensor:
        _check_pair(S, C)
        return S - C

    def hess_apply(self, S: Tensor, C: Tensor, U: Tensor) -> Tensor:
        _check_pair(S, C)
        return U

    def hessian_factors(self, S: Tensor) -> tuple[Tensor, Tensor | None]:
        return torch.ones_like(S), None

    def value_and_grad(self, S: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
        """One n×c temporary D = S − C: L = ⟨D, D⟩/2 and G = D."""
        _check_pair(S, C)
        D = S - C
        flat = D.reshape(-1)
        return 0.5 * torch.dot(flat, flat), D

    def scalar_hessian(self) -> float | None:
        return 1.0


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy over all c classes (no reference class).

    L = Σ_i [−c_iᵀ s_i + logsumexp(s_i)] (evaluated as −Σ_i c_iᵀ (s_i − logsumexp(s_i)), identical
    because the rows of C sum to one), G = P − C,
    H_S[U]_i = (diag p_i − p_i p_iᵀ) u_i = p_i ∘ u_i − p_i (p_iᵀ u_i).
    """

    name = "cross_entropy"
    is_quadratic = False
    classification = True

    def prepare_targets(self, y: Tensor, n_outputs: int | None = None,
                        check_classes: bool = True) -> Tensor:
        """Class indices (n,) in [0, c) (n_outputs = c required) or one-hot rows (n, c) -> one-hot
        float (n, c). At least two classes must occur (check_classes)."""
        C = self._one_hot(y, n_outputs)
        if check_classes:
            self.check_classes(C)
        return C

    def class_counts(self, C: Tensor) -> Tensor:
        return C.sum(dim=0)

    def _one_hot(self, y: Tensor, n_outputs: int | None) -> Tensor:
        if not isinstance(y, Tensor):
            raise ValueError(f"targets must be a torch.Tensor, got {type(y).__name__}")
        if y.is_complex():
            raise ValueError("cross-entropy targets must be real class labels, got complex")
        if y.ndim == 1:
            return self._from_indices(y, n_outputs)
        if y.ndim != 2:
            raise ValueError(
                f"cross-entropy targets must be class indices of shape (n,) or one-hot rows of "
                f"shape (n, c); got shape {tuple(y.shape)}"
            )
        if y.shape[1] == 1 and n_outputs not in (None, 1):
            raise ValueError(
                f"cross-entropy targets of shape {tuple(y.shape)} look like a column of class "
                f"indices; pass them as shape (n,) with y.reshape(-1), or one-hot with "
                f"{n_outputs} columns"
            )
        return self._from_one_hot(y, n_outputs)

    def _from_indices(self, y: Tensor, n_outputs: int | None) -> Tensor:
        _check_not_empty(y, "cross-entropy targets")
        if n_outputs is None:
            raise ValueError(
                "cross-entropy class-index targets need the number of classes: pass n_outputs=c "
                "(the network's output size)"
            )
        if n_outputs < 2:
            raise ValueError(
                f"cross-entropy needs n_outputs >= 2 classes, got {n_outputs}; for two classes "
                f"with a single output use the logistic loss"
            )
        _check_finite(y, "cross-entropy targets")
        _check_integer_valued(y, "cross-entropy targets")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= n_outputs:
            raise ValueError(
                f"cross-entropy class labels must lie in [0, {n_outputs}) (n_outputs={n_outputs}), "
                f"but the labels found range over [{lo}, {hi}]; relabel the classes as "
                f"0, ..., c-1 or increase n_outputs"
            )
        idx = y.to(torch.int64)
        dtype = _float_dtype(y)
        C = torch.zeros(idx.shape[0], n_outputs, dtype=dtype, device=y.device)
        C.scatter_(1, idx.reshape(-1, 1), 1.0)
        return C

    def _from_one_hot(self, y: Tensor, n_outputs: int | None) -> Tensor:
        _check_not_empty(y, "cross-entropy targets")
        if n_outputs is not None and y.shape[1] != n_outputs:
            raise ValueError(
                f"one-hot cross-entropy targets have {y.shape[1]} columns but n_outputs="
                f"{n_outputs}; the columns must match the number of classes"
            )
        _check_finite(y, "cross-entropy targets")
        C = y.to(_float_dtype(y))
        if not bool(((C == 0) | (C == 1)).all()):
            raise ValueError(
                "one-hot cross-entropy targets must contain only 0 and 1; for class indices pass "
                "an int64 tensor of shape (n,) with n_outputs=c"
            )
        sums = C.sum(dim=1)
        bad = sums != 1
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0])
            raise ValueError(
                f"one-hot cross-entropy target rows must sum to 1 (exactly one class per sample), "
                f"but {int(bad.sum())} row(s) do not (first: row {i} sums to {float(sums[i]):g})"
            )
        return C

    def value(self, S: Tensor, C: Tensor) -> Tensor:
        _check_pair(S, C)
        return -(C * (S - torch.logsumexp(S, dim=1, keepdim=True))).sum()

    def grad(self, S: Tensor, C: Tensor) -> Tensor:
        _check_pair(S, C)
        return _softmax(S) - C

    def hess_apply(self, S: Tensor, C: Tensor, U: Tensor) -> Tensor:
        _check_pair(S, C)
        P = _softmax(S)
        PU = P * U
        return PU - P * PU.sum(dim=1, keepdim=True)

    def hessian_factors(self, S: Tensor) -> tuple[Tensor, Tensor | None]:
        """diag(p_i) − p_i p_iᵀ, p_i = softmax(s_i)."""
        P = _softmax(S)
        return P, P

    def predict_labels(self, S: Tensor) -> Tensor:
        """argmax_k s_ik, int64 (n,)."""
        return S.argmax(dim=1)


class LogisticLoss(Loss):
    """Binary logistic loss, one output column (c = 1), labels 0/1.

    L = Σ_i [log(1 + e^{s_i}) − c_i s_i], evaluated stably as
    Σ_i [max(s_i, 0) − c_i s_i + log1p(e^{−|s_i|})]; G = σ − C; H_S[U] = σ(s) σ(−s) U.
    """

    name = "logistic"
    is_quadratic = False
    classification = True

    def prepare_targets(self, y: Tensor, n_outputs: int | None = None,
                        check_classes: bool = True) -> Tensor:
        """0/1 labels (n,) or (n, 1) (float, int or bool) -> float (n, 1). Both must occur
        (check_classes)."""
        C = self._labels(y, n_outputs)
        if check_classes:
            self.check_classes(C)
        return C

    def class_counts(self, C: Tensor) -> Tensor:
        ones = C.sum()
        return torch.stack([C.shape[0] - ones, ones])

    def _labels(self, y: Tensor, n_outputs: int | None) -> Tensor:
        if not isinstance(y, Tensor):
            raise ValueError(f"targets must be a torch.Tensor, got {type(y).__name__}")
        if y.is_complex():
            raise ValueError("logistic targets must be real 0/1 labels, got complex")
        if n_outputs is not None and n_outputs != 1:
            raise ValueError(
                f"the logistic loss has a single output (c = 1), got n_outputs={n_outputs}; "
                f"for {n_outputs} classes use the cross_entropy loss"
            )
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.reshape(-1)
        if y.ndim != 1:
            raise ValueError(
                f"logistic targets must be 0/1 labels of shape (n,) or (n, 1); got shape "
                f"{tuple(y.shape)} (for more than two classes use the cross_entropy loss)"
            )
        _check_not_empty(y, "logistic targets")
        _check_finite(y, "logistic targets")
        if y.dtype == torch.bool:
            y = y.to(torch.int64)
        _check_integer_valued(y, "logistic targets")
        lo, hi = float(y.min()), float(y.max())
        if lo < 0 or hi > 1:
            hint = " (map {-1, +1} labels to {0, 1} with (y + 1) / 2)" if lo == -1 else ""
            raise ValueError(
                f"logistic labels must be 0 or 1 (expected range [0, 1]), but the labels found "
                f"range over [{lo:g}, {hi:g}]{hint}"
            )
        return y.to(_float_dtype(y)).reshape(-1, 1)

    @staticmethod
    def _check_c(S: Tensor) -> None:
        if S.ndim == 2 and S.shape[1] != 1:
            raise ValueError(
                f"the logistic loss needs one output column (c = 1), got S of shape "
                f"{tuple(S.shape)}; use cross_entropy for several classes"
            )

    def value(self, S: Tensor, C: Tensor) -> Tensor:
        _check_pair(S, C)
        self._check_c(S)
        return (torch.relu(S) - C * S + torch.log1p(torch.exp(-S.abs()))).sum()

    def grad(self, S: Tensor, C: Tensor) -> Tensor:
        _check_pair(S, C)
        self._check_c(S)
        return torch.sigmoid(S) - C

    def hess_apply(self, S: Tensor, C: Tensor, U: Tensor) -> Tensor:
        _check_pair(S, C)
        self._check_c(S)
        return torch.sigmoid(S) * torch.sigmoid(-S) * U

    def hessian_factors(self, S: Tensor) -> tuple[Tensor, Tensor | None]:
        """σ(s_i)(1 − σ(s_i))."""
        return torch.sigmoid(S) * torch.sigmoid(-S), None

    def predict_labels(self, S: Tensor) -> Tensor:
        """1 where s_i > 0 else 0, int64 (n,)."""
        return (S.reshape(S.shape[0], -1)[:, 0] > 0).to(torch.int64)


_LOSSES: dict[str, type[Loss]] = {
    "least_squares": LeastSquaresLoss,
    "cross_entropy": CrossEntropyLoss,
    "logistic": LogisticLoss,
}
LOSS_NAMES: tuple[str, ...] = tuple(_LOSSES)


def make_loss(name: str) -> Loss:
    """The loss called ``name``: "least_squares", "cross_entropy" or "logistic"."""
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    if key not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    return _LOSSES[key]()
