"""The targets of a batch: checked against the model and the loss (batch_targets), and a
classifier's classes counted over every process's rows (check_target_classes)."""

from __future__ import annotations

import torch
from torch import Tensor

from .head import HeadSplit
from .losses import Loss
from .reduce import SampleReducer
from .validate import check_batch

__all__ = ["batch_targets", "check_target_classes"]


def batch_targets(split: HeadSplit, loss: Loss, x: Tensor, y: Tensor,
                  check_classes: bool = True) -> Tensor:
    """Check a batch (x, y) against the model (validate.check_batch) and the loss; return the
    float64 targets C (check_classes=False: a classifier's classes are counted later, over
    every process's rows: Loss.check_classes)."""
    check_batch(split, x, y)
    try:
        C = loss.prepare_targets(y, split.n_outputs, check_classes).to(torch.float64)
    except ValueError as e:
        raise ValueError(f"y: {e}") from None
    if C.shape[1] != split.n_outputs:
        raise ValueError(
            f"targets have {C.shape[1]} columns but the head has {split.n_outputs} "
            "outputs: make nn.Linear's out_features match the targets"
        )
    return C


def check_target_classes(loss: Loss, C: Tensor, reducer: SampleReducer) -> None:
    """At least two classes in a classifier's targets C, counted over every process's rows
    (reducer.sum): one process's shard may hold one class. Every process raises alike."""
    try:
        loss.check_classes(C, reducer.sum)
    except ValueError as e:
        raise ValueError(f"y: {e}") from None
