"""All training methods behind one interface (gnvpro_experiments.baselines.base):

    records = train(method, model, data, settings)

Methods (method.md §5): "gnvpro" (trust-region GN on Φ_red), "gn" (trust-region GN on (θ, W),
coupled GN matrix), "gn-blockdiag" (the reference's block-diagonal GN matrix), "lbfgs-vpro"
(L-BFGS with strong Wolfe line search on Φ_red), "adam" and "sgd" (mini-batch, on (θ, W)),
and the paper's stochastic scheme (experiments.md §5, gnvpro_experiments.baselines.sub_batch):
"gnvpro-stochastic", "gn-stochastic" and "lbfgs-vpro-stochastic" (the deterministic method on
fixed sub-batches).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..problems.base import Split
from .base import TrainSettings
from .joint_gn import JointProblem, train_gn, train_gn_blockdiag
from .lbfgs_vpro import strong_wolfe, train_lbfgs_vpro
from .stochastic import train_adam, train_sgd
from .sub_batch import (
    train_gn_stochastic,
    train_gnvpro_stochastic,
    train_lbfgs_vpro_stochastic,
)
from .train_gnvpro import train_gnvpro

TrainFn = Callable[[nn.Module, Split, TrainSettings], list[dict]]

METHODS: dict[str, TrainFn] = {
    "gnvpro": train_gnvpro,
    "gnvpro-tn": train_gnvpro,  # GNvpro with subproblem = "tn" (its config says so)
    "gn": train_gn,
    "gn-blockdiag": train_gn_blockdiag,
    "lbfgs-vpro": train_lbfgs_vpro,
    "adam": train_adam,
    "sgd": train_sgd,
    "gnvpro-stochastic": train_gnvpro_stochastic,
    "gnvpro-tn-stochastic": train_gnvpro_stochastic,  # subproblem = "tn" in its config
    "gn-stochastic": train_gn_stochastic,
    "lbfgs-vpro-stochastic": train_lbfgs_vpro_stochastic,
}


def train(method: str, model: nn.Module, data: Split, settings: TrainSettings) -> list[dict]:
    """Train `model` in place on data.x_train/y_train with `method`; one record per iteration
    (record 0 = the start θ0, W*(θ0), 2 work units)."""
    try:
        fn = METHODS[method]
    except KeyError:
        raise ValueError(
            f"unknown training method {method!r}; choose one of {', '.join(METHODS)}"
        ) from None
    return fn(model, data, settings)


__all__ = [
    "METHODS",
    "JointProblem",
    "TrainSettings",
    "strong_wolfe",
    "train",
    "train_adam",
    "train_gn",
    "train_gn_blockdiag",
    "train_gnvpro",
    "train_gn_stochastic",
    "train_gnvpro_stochastic",
    "train_lbfgs_vpro",
    "train_lbfgs_vpro_stochastic",
    "train_sgd",
]
