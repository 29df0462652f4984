"""Metrics users expect, from predictions S and the user's targets y.

Regression: loss L and the per-sample relative error ‖s_j − c_j‖/‖c_j‖ (mean, std, min, max).
Classification: loss, accuracy, and per-class counts (support, correct).
The loss is the average (1/n) Σ_i ℓ_i taken by a SampleReducer (gnvpro.reduce; default: the mean
over the rows of S).
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from .losses import LeastSquaresLoss, Loss
from .reduce import SampleReducer, resolve_reducer

# id(y) → (weakref to y, key, C, ‖c_j‖) for the few target tensors metrics are taken on at
# every iteration (training, validation, test sets)
_TARGETS: dict[int, tuple] = {}
_CACHED = 8


def _targets(loss: Loss, y: Tensor, n_outputs: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """(C, row norms ‖c_j‖) of y, prepared once per (unchanged) y tensor, loss and dtype."""
    key = (y._version, loss.name, n_outputs, like.dtype, like.device)
    hit = _TARGETS.get(id(y))
    if hit is not None and hit[0]() is y and hit[1] == key:
        return hit[2], hit[3]
    C = loss.prepare_targets(y, n_outputs).to(like)
    norms = C.norm(dim=1)
    for k in [k for k, v in _TARGETS.items() if v[0]() is None]:  # targets already freed
        del _TARGETS[k]
    if len(_TARGETS) >= _CACHED:
        _TARGETS.pop(next(iter(_TARGETS)))
    _TARGETS[id(y)] = (weakref.ref(y), key, C, norms)
    return C, norms


PREDICT_ROWS = 1024  # rows per forward pass of predict(): bounds an image net's activations


@torch.no_grad()
def predict(model: torch.nn.Module, x: Tensor, rows: int | None = None) -> Tensor:
    """model(x) without the autograd graph, ``rows`` (default PREDICT_ROWS) rows per forward
    pass (the activations of a CNN on 10000 CIFAR-10 images would take several GB at once);
    one pass when x is smaller."""
    rows = rows or PREDICT_ROWS
    if len(x) <= rows:
        return model(x)
    return torch.cat([model(x[i : i + rows]) for i in range(0, len(x), rows)])


@torch.no_grad()
def prediction_metrics(
    loss: Loss, S: Tensor, y: Tensor, n_outputs: int, reducer: SampleReducer | None = None
) -> dict:
    """Loss and task metrics of predictions S (n, c) against user targets y; the loss is
    averaged by ``reducer`` (default: over the n rows of S)."""
    reducer = resolve_reducer(reducer, len(S))
    S = S.to(torch.float64)
    C, c_norms = _targets(loss, y, n_outputs, S)
    if not loss.classification:  # one n×c pass: residual row norms r_j, e_j = r_j / ‖c_j‖
        r = (S - C).norm(dim=1)
        L = reducer.mean(0.5 * r.square().sum() if isinstance(loss, LeastSquaresLoss) else
                         loss.value(S, C))
        e = r / c_norms.clamp_min(torch.finfo(S.dtype).tiny)
        return {"loss": float(L), "rel_err": float(e.mean()),
                "rel_err_std": float(e.std()) if len(e) > 1 else 0.0,
                "rel_err_min": float(e.min()), "rel_err_max": float(e.max())}
    pred = loss.predict_labels(S)
    true = loss.predict_labels(C) if C.shape[1] > 1 else C[:, 0].round().long()
    correct = pred == true
    k = max(n_outputs, 2)
    L = reducer.mean(loss.value(S, C))
    return {"loss": float(L), "accuracy": float(correct.double().mean()),
            "support": torch.bincount(true, minlength=k).tolist(),
            "correct": torch.bincount(true[correct], minlength=k).tolist()}
