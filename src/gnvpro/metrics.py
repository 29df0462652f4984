"""Metrics users expect, from predictions S and the user's targets y.

Regression: loss L and the per-sample relative error ‖s_j − c_j‖/‖c_j‖ (mean, std, min, max).
Classification: loss, accuracy, and per-class counts (support, correct).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .losses import Loss


def relative_errors(S: Tensor, C: Tensor) -> Tensor:
    """e_j = ‖s_j − c_j‖ / ‖c_j‖ per sample (row)."""
    C = C.to(S)
    return (S - C).norm(dim=1) / C.norm(dim=1).clamp_min(torch.finfo(S.dtype).tiny)


@torch.no_grad()
def prediction_metrics(loss: Loss, S: Tensor, y: Tensor, n_outputs: int) -> dict:
    """Loss and task metrics of predictions S (n, c) against user targets y."""
    S = S.to(torch.float64)
    C = loss.prepare_targets(y, n_outputs).to(S)
    out: dict = {"loss": float(loss.value(S, C))}
    if loss.classification:
        pred = loss.predict_labels(S)
        true = loss.predict_labels(C) if C.shape[1] > 1 else C[:, 0].round().long()
        correct = pred == true
        out["accuracy"] = float(correct.double().mean())
        k = max(n_outputs, 2)
        out["support"] = torch.bincount(true, minlength=k).tolist()
        out["correct"] = torch.bincount(true[correct], minlength=k).tolist()
    else:
        e = relative_errors(S, C)
        out.update(rel_err=float(e.mean()), rel_err_std=float(e.std()) if len(e) > 1 else 0.0,
                   rel_err_min=float(e.min()), rel_err_max=float(e.max()))
    return out
