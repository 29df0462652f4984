"""Gauss-Newton without variable projection ("GN"): the trust-region solver on z = (θ, vec W)
(gnvpro.joint.JointProblem), W starting at W*(θ0); inner_seconds holds the W*(θ0) solve."""

from __future__ import annotations

import time

from torch import Tensor, nn

from gnvpro.joint import JointProblem
from gnvpro.solver import (
    SolverConfig,
    Termination,
    check_termination,
    initial_state,
    trust_region_step,
)

from ..problems.base import Split
from .base import TrainSettings
from .train_gnvpro import (
    START_WORK,
    advance,
    make_record,
    make_start,
    metrics_of,
    progress_bar,
    write_back,
)

__all__ = ["JointProblem", "train_gn", "train_gn_blockdiag", "train_joint_gn"]


# ------------------------------------------------------------------------------- training
def train_joint_gn(
    model: nn.Module, data: Split, settings: TrainSettings, coupled: bool = True
) -> list[dict]:
    """Trust-region GN on (θ, W) from (θ0, W*(θ0)); the model ends with the last accepted z."""
    method = "gn" if coupled else "gn-blockdiag"
    t0 = time.perf_counter()
    start = make_start(model, data, settings)
    split, obj = start.split, start.objective
    problem = JointProblem(
        split, start.loss, data.x_train, data.y_train, settings.alpha_w, settings.alpha_theta,
        B=settings.regularizer, coupled=coupled, jvp_mode=settings.jvp_mode,
    )
    cfg = SolverConfig(max_krylov=settings.max_krylov, krylov_rtol=settings.krylov_rtol,
                       subproblem=settings.subproblem)
    state = initial_state(problem, problem.pack(start.theta0, start.point.W))
    setup = time.perf_counter() - t0 - state.seconds
    inner_seconds = start.inner_seconds

    def write(z: Tensor) -> None:
        write_back(split, obj, *problem.unpack(z))

    records = [make_record(
        method, 0, state.pt.value, state.pt.loss, state.work, setup + state.seconds,
        inner_seconds, metrics_of(state.pt.S, model, start.loss, split, data),
        grad_norm=state.grad_norm,
    )]
    max_iter = settings.max_iter
    max_work = START_WORK + settings.max_work
    with progress_bar(settings.progress, settings.max_work) as bar:
        while True:
            term = check_termination(state, cfg, max_iter, max_work, settings.max_seconds)
            if term is not Termination.RUNNING:
                break
            state, info = trust_region_step(problem, state, cfg)
            write(state.pt.theta)
            rec = info.to_dict()
            rec.pop("metrics")
            rec.update(seconds=setup + info.seconds, inner_seconds=inner_seconds)
            rec["metrics"] = metrics_of(state.pt.S, model, start.loss, split, data)
            records.append({"method": method, **rec})
            advance(bar, rec)
    write(state.pt.theta)
    records[-1]["termination"] = term.value
    return records


def train_gn(model: nn.Module, data: Split, settings: TrainSettings) -> list[dict]:
    """"gn": coupled Gauss-Newton matrix on (θ, W) (the honest variant)."""
    return train_joint_gn(model, data, settings, coupled=True)


def train_gn_blockdiag(model: nn.Module, data: Split, settings: TrainSettings) -> list[dict]:
    """"gn-blockdiag": the reference's block-diagonal GN matrix (no θ–W coupling)."""
    return train_joint_gn(model, data, settings, coupled=False)
