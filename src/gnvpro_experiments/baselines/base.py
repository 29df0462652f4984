"""The training interface every method (GNvpro and the baselines) shares.

    records = train(method, model, data, settings)

trains `model` (an nn.Sequential ending in nn.Linear, modified in place to the final — or, where
settings.keep_best_val, the best-validation — weights) on data.x_train/y_train and returns one
record (a JSON-able dict) per iteration or epoch, with at least:

    iteration, loss (training objective Φ incl. regularisers), work_units (cumulative),
    seconds (cumulative wall time), inner_seconds (cumulative time in inner W solves),
    metrics: {"train": {...}, "val": {...}}  (gnvpro.metrics.prediction_metrics)

Record 0 describes the starting point (work_units 2: objective and gradient). All methods start
from the same θ0 with W = W*(θ0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gnvpro.regularizer import LinearMap


@dataclass
class TrainSettings:
    loss: str = "least_squares"
    alpha_w: float = 1e-10
    alpha_theta: float = 1e-10
    max_work: float = 200.0  # work-unit budget of this call (method.md §4)
    max_iter: int | None = None
    max_seconds: float | None = None  # wall-time budget of this call (records' "seconds")
    # trust-region methods (GNvpro, GN)
    max_krylov: int = 20
    krylov_rtol: float = 1e-2
    subproblem: str = "lanczos"  # or "steihaug", "tn" (GNvpro only)
    tn_memory: int = 10
    extrapolate: bool = False
    jacobian: str = "full"  # or "kaufman" (GNvpro: drops dW*/dθ, the ablation)
    inner_rtol: float = 1e-10
    inner_atol: float = 1e-10
    min_radius: float = 1e-14
    jvp_mode: str = "auto"  # J_Z products (gnvpro.autodiff.JVP_MODES)
    # stochastic methods (ADAM, SGD)
    lr: float = 1e-3
    batch_size: int = 32
    momentum: float = 0.9
    nesterov: bool = True
    keep_best_val: bool = False
    # L-BFGS-VarPro
    lbfgs_memory: int = 10
    seed: int = 0
    regularizer: LinearMap | None = None
    progress: bool = False
    extra: dict = field(default_factory=dict)

    def out_of_time(self, record: dict[str, Any]) -> bool:
        """Whether a record's cumulative seconds reached max_seconds."""
        return self.max_seconds is not None and float(record["seconds"]) >= self.max_seconds
