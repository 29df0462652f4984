"""The paper's stochastic GNvpro (experiments.md section 5): trust-region GNvpro on fixed batches.

The training set is split once (seeded with settings.seed) into ``n_batches`` fixed sub-batches.
For every epoch and every sub-batch, ``iters_per_batch`` GNvpro outer iterations are taken on
that sub-batch; :meth:`gnvpro.optim.GNvpro.step` re-evaluates Φ_red and W* on a new batch and
carries the trust-region radius over.

settings.extra keys (defaults: the paper's CIFAR-10 settings): ``epochs`` (2), ``n_batches`` (4),
``iters_per_batch`` (3), ``inner_max_iter`` (400, inner Newton iterations), ``head``.
settings.max_iter, if given, caps the number of outer iterations.

Work units stay "passes over the training set": the work of every outer iteration (as GNvpro
counts it on its sub-batch, the re-evaluation on a new batch included) is scaled by
len(batch) / n_train. Record 0 is the start on the first batch (2 WU scaled the same way). Every
record carries the metrics of the current sub-batch as ``metrics["train"]`` (from the predictions
at hand) and the validation metrics, plus ``epoch``, ``batch``, ``radius`` (after the step) and
``radius_in`` (the radius the step started from).
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from ..metrics import prediction_metrics
from ..optim import GNvpro, GNvproConfig
from ..problems.base import Split
from .base import TrainSettings
from .train_gnvpro import advance, make_record, progress_bar, val_metrics

__all__ = ["train_gnvpro_stochastic"]

METHOD = "gnvpro-stochastic"


def train_gnvpro_stochastic(model: nn.Module, data: Split, settings: TrainSettings) -> list[dict]:
    extra = settings.extra
    epochs = int(extra.get("epochs", 2))
    n_batches = int(extra.get("n_batches", 4))
    iters = int(extra.get("iters_per_batch", 3))
    inner_max_iter = int(extra.get("inner_max_iter", 400))
    if epochs < 1 or n_batches < 1 or iters < 1:
        raise ValueError(f"epochs, n_batches and iters_per_batch must be >= 1, got {epochs}, "
                         f"{n_batches}, {iters}")
    x, y = data.x_train, data.y_train
    n = len(x)
    n_batches = min(n_batches, n)
    opt = GNvpro(
        model, settings.loss, settings.alpha_w, settings.alpha_theta, head=extra.get("head"),
        config=GNvproConfig(
            max_krylov=settings.max_krylov, krylov_rtol=settings.krylov_rtol,
            subproblem=settings.subproblem, inner_max_iter=inner_max_iter,
        ),
        regularizer=settings.regularizer,
    )
    gen = torch.Generator().manual_seed(int(settings.seed))
    perm = torch.randperm(n, generator=gen).to(x.device)
    batches = [(x[idx], y[idx]) for idx in torch.tensor_split(perm, n_batches)]

    t0 = time.perf_counter()
    xb, yb = batches[0]
    opt.run(xb, yb, max_iter=0)  # θ0, W*(θ0) on the first batch; writes W* into the model
    state = opt.state
    assert state is not None
    scale = len(xb) / n
    work = state.work * scale
    last_work = state.work
    seconds = time.perf_counter() - t0
    inner_seconds = state.inner_seconds
    n_out = opt.split.n_outputs

    def metrics(yb_: torch.Tensor) -> dict:
        assert opt.state is not None
        out = {"train": prediction_metrics(opt.loss, opt.state.pt.S, yb_, n_out)}
        val = val_metrics(model, opt.loss, opt.split, data)
        if val is not None:
            out["val"] = val
        return out

    records = [make_record(METHOD, 0, state.pt.value, state.pt.loss, work, seconds,
                           inner_seconds, metrics(yb), epoch=0, batch=0,
                           radius=state.radius, batch_size=len(xb))]
    termination = "epochs done"
    it = 0
    total_work = epochs * iters * 2.0 * 4  # rough bar length only
    with progress_bar(settings.progress, total_work) as bar:
        done = False
        for epoch in range(1, epochs + 1):
            for b, (xb, yb) in enumerate(batches):
                scale = len(xb) / n
                for _ in range(iters):
                    if settings.max_iter is not None and it >= settings.max_iter:
                        termination, done = "iteration limit reached", True
                        break
                    radius_in = opt.state.radius if opt.state is not None else None
                    prev_inner = opt.state.inner_seconds if opt.state is not None else 0.0
                    ts = time.perf_counter()
                    info = opt.step(xb, yb)
                    seconds += time.perf_counter() - ts
                    it += 1
                    st = opt.state
                    assert st is not None
                    # GNvpro's counters are cumulative across batches (the re-evaluation on a
                    # new batch included); count the increment at this batch's scale
                    work += (st.work - last_work) * scale
                    last_work = st.work
                    inner_seconds += max(st.inner_seconds - prev_inner, 0.0)
                    rec = make_record(
                        METHOD, it, info.loss, info.data_loss, work, seconds, inner_seconds,
                        metrics(yb), epoch=epoch, batch=b, radius=info.radius,
                        radius_in=radius_in, rho=info.rho, accepted=info.accepted,
                        outcome=info.outcome, krylov_iters=info.krylov_iters,
                        grad_norm=info.grad_norm, inner_iterations=info.inner_iterations,
                        batch_size=len(xb),
                    )
                    records.append(rec)
                    advance(bar, rec)
                    if not math.isfinite(info.loss):
                        termination, done = "diverged (non-finite objective)", True
                        break
                if done:
                    break
            if done:
                break
    records[-1]["termination"] = termination
    return records
