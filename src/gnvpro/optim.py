"""GNvpro: the stateful optimiser a user holds (functional core in varpro.py and solver.py).

    opt = GNvpro(model, loss="least_squares", alpha_w=1e-10, alpha_theta=1e-10)
    rec = opt.step(x, y)                     # one outer trust-region iteration
    hist = opt.run(x, y, max_work=200, val=(xv, yv))

After every step the model holds the accepted θ and the solved head W* = [W̃, b], so
model(x) and model.state_dict() just work. Calling step on a new batch re-evaluates there and
carries the trust-region radius over (the paper's stochastic variant for CIFAR-10).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import Tensor, nn

from .head import HeadSplit, check_head_is_last, split_model
from .losses import Loss, make_loss
from .metrics import prediction_metrics
from .regularizer import LinearMap
from .solver import (
    SolverConfig,
    SolverState,
    StepInfo,
    Termination,
    check_termination,
    initial_state,
    trust_region_step,
)
from .trust_region import RadiusRule
from .varpro import InnerOptions, ReducedObjective, WarmStart, check_finite


@dataclass(frozen=True)
class GNvproConfig:
    """All settings of GNvpro besides the model, the loss and α (defaults: the reference's)."""

    max_krylov: int = 20
    krylov_rtol: float = 1e-2
    subproblem: str = "lanczos"  # or "steihaug"
    jacobian: str = "full"  # or "kaufman" (drops dW*/dθ; ablation)
    gn_alpha_w: bool = True  # include α_W J_Wᵀ J_W in H_GN (the least-squares GN matrix)
    grad_rtol: float = 1e-10
    grad_atol: float = 0.0
    inner_rtol: float = 1e-10
    inner_atol: float = 1e-10
    inner_max_iter: int = 100
    jvp_mode: str = "jvp"  # or "linearize" (trace once per outer step; pays off for big nets)
    radius_rule: RadiusRule = field(default_factory=RadiusRule)

    def solver(self) -> SolverConfig:
        return SolverConfig(
            max_krylov=self.max_krylov, krylov_rtol=self.krylov_rtol, subproblem=self.subproblem,
            radius_rule=self.radius_rule, grad_rtol=self.grad_rtol, grad_atol=self.grad_atol,
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class History:
    """Records of a run and why it stopped."""

    records: list[StepInfo]
    termination: Termination

    @property
    def final(self) -> StepInfo | None:
        return self.records[-1] if self.records else None


class GNvpro:
    """Gauss-Newton variable projection for a model whose last layer is affine."""

    def __init__(
        self,
        model: nn.Module,
        loss: str | Loss = "least_squares",
        alpha_w: float = 1e-10,
        alpha_theta: float = 1e-10,
        head: str | None = None,
        config: GNvproConfig | None = None,
        regularizer: LinearMap | None = None,
    ) -> None:
        self.split: HeadSplit = split_model(model, head)
        self.model = model
        self.loss = make_loss(loss) if isinstance(loss, str) else loss
        if not isinstance(self.loss, Loss):
            raise TypeError("loss must be a name or a gnvpro.losses.Loss")
        self.alpha_w = float(alpha_w)
        self.alpha_theta = float(alpha_theta)
        self.config = config or GNvproConfig()
        self.solver_config = self.config.solver()
        self.regularizer = regularizer
        self.objective: ReducedObjective | None = None
        self.state: SolverState | None = None
        self._batch: tuple[Tensor, Tensor] | None = None
        self._checked = False
        self._resume: tuple[float | None, float, int] | None = None

    # ------------------------------------------------------------------ state
    def theta(self) -> Tensor:
        """θ as a flat float64 vector (the model's current feature weights)."""
        params = self.split.feature_params()
        return torch.cat([p.detach().reshape(-1).to(torch.float64) for p in params.values()])

    @torch.no_grad()
    def _write_back(self) -> None:
        assert self.objective is not None and self.state is not None
        named = self.objective.features.layout.unflatten(self.state.pt.theta)
        for name, p in self.split.feature_params().items():
            p.copy_(named[name].to(p))
        self.split.set_head_weights(self.state.pt.W)

    def set_batch(self, x: Tensor, y: Tensor) -> None:
        """Evaluate Φ_red, W* and ∇Φ_red at the current θ on (x, y) (2 work units; nothing
        if (x, y) is already the batch). The trust-region radius and the counters carry over,
        so step() on a sequence of batches is the paper's stochastic variant."""
        if self._batch is not None and self._batch[0] is x and self._batch[1] is y:
            return
        check_finite("x", x)
        if not self._checked:
            check_head_is_last(self.split, x[: min(len(x), 16)])
            self._checked = True
        c = self.config
        objective = ReducedObjective(
            self.split, self.loss, x, y, self.alpha_w, self.alpha_theta, B=self.regularizer,
            jacobian=c.jacobian, gn_alpha_w=c.gn_alpha_w, jvp_mode=c.jvp_mode,
            inner=InnerOptions(c.inner_rtol, c.inner_atol, c.inner_max_iter),
        )
        old = self.state
        prev = old.pt if old is not None and old.pt.W.shape[0] == self.split.n_outputs else None
        if prev is None:  # warm-start the first inner solve from the model's head
            prev = WarmStart(self.split.head_weights().to(torch.float64))
        fresh = initial_state(objective, self.theta(), prev)
        if old is not None:  # a new batch: carry radius, work and time over
            fresh = replace(fresh, radius=old.radius, work=old.work + fresh.work,
                            iteration=old.iteration, seconds=old.seconds + fresh.seconds,
                            inner_seconds=old.inner_seconds + fresh.inner_seconds)
        elif self._resume is not None:  # after load_state_dict
            radius, work, iteration = self._resume
            fresh = replace(fresh, radius=radius, work=work + fresh.work, iteration=iteration)
            self._resume = None
        # commit only now: a bad batch raises above and leaves the optimiser as it was
        self.objective, self.state, self._batch = objective, fresh, (x, y)
        self._write_back()

    # ------------------------------------------------------------------- API
    def step(self, x: Tensor, y: Tensor) -> StepInfo:
        """One outer iteration on the batch (x, y); the model holds the result."""
        self.set_batch(x, y)
        assert self.objective is not None and self.state is not None
        self.state, info = trust_region_step(self.objective, self.state, self.solver_config)
        self._write_back()
        return info

    def evaluate(self, x: Tensor, y: Tensor) -> dict:
        """Metrics of the current model on (x, y) (loss, relative error or accuracy)."""
        with torch.no_grad():
            S = self.model(x)
        return prediction_metrics(self.loss, S, y, self.split.n_outputs)

    def run(
        self,
        x: Tensor,
        y: Tensor,
        max_work: float | None = None,
        max_iter: int | None = None,
        val: tuple[Tensor, Tensor] | None = None,
        callback: Callable[[StepInfo], bool | None] | None = None,
        progress: bool = False,
    ) -> History:
        """Iterate until a gradient tolerance, max_iter or max_work (cumulative work units) is
        reached. callback(record) may return True to stop. Validation metrics go in
        record.metrics["val"]."""
        if max_work is None and max_iter is None and self.config.grad_rtol <= 0:
            raise ValueError("give max_work or max_iter (or a positive grad_rtol) to stop the run")
        self.set_batch(x, y)
        assert self.state is not None
        records: list[StepInfo] = []
        start_iter, start_work = self.state.iteration, self.state.work
        bar = _progress(progress, max_work, max_iter)
        try:
            while True:
                term = check_termination(
                    self.state, self.solver_config,
                    None if max_iter is None else start_iter + max_iter,
                    None if max_work is None else start_work + max_work,
                )
                if term is not Termination.RUNNING:
                    break
                rec = self.step(x, y)
                rec.metrics["train"] = _train_metrics(self, y)
                if val is not None:
                    rec.metrics["val"] = self.evaluate(*val)
                records.append(rec)
                if bar is not None:
                    bar.update((rec.work_units - start_work - bar.n) if max_work else 1)
                    bar.set_postfix(loss=f"{rec.loss:.4g}", radius=f"{rec.radius:.2g}")
                if callback is not None and callback(rec):
                    term = Termination.STOPPED
                    break
        finally:
            if bar is not None:
                bar.close()
        return History(records, term)

    # ---------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Model weights, settings and the trust-region radius/work counters."""
        s = self.state
        return {
            "model": self.model.state_dict(),
            "config": self.config.to_dict(),
            "loss": self.loss.name,
            "alpha_w": self.alpha_w,
            "alpha_theta": self.alpha_theta,
            "radius": None if s is None else s.radius,
            "work": 0.0 if s is None else s.work,
            "iteration": 0 if s is None else s.iteration,
        }

    def load_state_dict(self, sd: dict) -> None:
        missing = {"model", "radius", "work", "iteration"} - set(sd)
        if missing:
            raise ValueError(f"not a GNvpro state dict: missing {sorted(missing)}")
        self.model.load_state_dict(sd["model"])
        self.state = None
        self._batch = None
        self._resume = (sd["radius"], float(sd["work"]), int(sd["iteration"]))


def _train_metrics(opt: GNvpro, y: Tensor) -> dict:
    """Training metrics from the predictions already at hand (no extra forward pass)."""
    assert opt.state is not None
    return prediction_metrics(opt.loss, opt.state.pt.S, y, opt.split.n_outputs)


def _progress(enabled: bool, max_work: float | None, max_iter: int | None):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    total = max_work if max_work is not None else max_iter
    return tqdm(total=total, unit="WU" if max_work is not None else "it", leave=False)
