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
from dataclasses import asdict, dataclass, field, fields, replace

import torch
from torch import Tensor, nn

from .head import HeadSplit, check_head_is_last, split_model
from .losses import Loss, make_loss
from .metrics import prediction_metrics
from .progress import bar
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
from .threads import auto_threads, intra_op_threads
from .trust_region import RadiusRule
from .validate import (
    check_batch,
    check_model,
    check_real,
    config_from_dict,
    describe,
    validate_config,
)
from .varpro import InnerOptions, ReducedObjective, WarmStart


@dataclass(frozen=True)
class GNvproConfig:
    """All settings of GNvpro besides the model, the loss and α.

    The defaults are the fastest variant measured (docs/results.md, "wall time"): truncated
    Gauss-Newton, ≤ 10 CG products on H_GN d = −∇Φ_red preconditioned by L-BFGS(10) from the
    accepted steps, strong Wolfe line search. ``GNvproConfig.trust_region()`` gives the paper's
    (and the reference code's) trust region: Lanczos, ≤ 20 vectors, tolerance 1e-2.
    """

    max_krylov: int = 10  # products per outer iteration (CG for "tn", Lanczos vectors for TR)
    krylov_rtol: float = 1e-2
    subproblem: str = "tn"  # or "lanczos" (the paper's trust region), "steihaug" (solver.py)
    jacobian: str = "full"  # or "kaufman" (drops dW*/dθ; ablation)
    gn_alpha_w: bool = True  # include α_W J_Wᵀ J_W in H_GN (the least-squares GN matrix)
    grad_rtol: float = 1e-10
    grad_atol: float = 0.0
    inner_rtol: float = 1e-10
    inner_atol: float = 1e-10
    inner_max_iter: int = 100
    jvp_mode: str = "auto"  # "double-backward", "jvp" or "linearize" (gnvpro.autodiff)
    radius_rule: RadiusRule = field(default_factory=RadiusRule)
    min_radius: float = 1e-14
    tn_memory: int = 10  # subproblem "tn": L-BFGS pairs in the CG preconditioner
    max_line_search: int = 25  # subproblem "tn": evaluations per line search
    extrapolate: bool = False  # trust region: also try 2s after a very successful step
    threads: int | None = None  # torch intra-op threads in step(); None: gnvpro.threads.auto

    def __post_init__(self) -> None:
        validate_config(self)  # every field, by its type and range (TypeError / ValueError)

    @classmethod
    def trust_region(cls, **changes: object) -> GNvproConfig:
        """The paper's trust-region GNvpro (Lanczos, ≤ 20 vectors, tolerance 1e-2)."""
        return cls(**{"subproblem": "lanczos", "max_krylov": 20, "krylov_rtol": 1e-2, **changes})

    def solver(self) -> SolverConfig:
        """The outer solver's settings (the fields both configs share)."""
        return SolverConfig(**{f.name: getattr(self, f.name) for f in fields(SolverConfig)})

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
        if not isinstance(loss, str | Loss):
            raise TypeError(f"loss must be a name (least_squares, cross_entropy, logistic) or a "
                            f"gnvpro.losses.Loss, got {describe(loss)}")
        alpha_w = check_real("alpha_w", alpha_w, low=0.0)
        alpha_theta = check_real("alpha_theta", alpha_theta, low=0.0)
        if config is not None and not isinstance(config, GNvproConfig):
            raise TypeError(f"config must be a gnvpro.GNvproConfig or None, got {describe(config)}")
        if regularizer is not None and not callable(regularizer):
            raise TypeError(f"regularizer must be a callable (a linear map of the named "
                            f"parameters) or None, got {describe(regularizer)}")
        self.split: HeadSplit = split_model(model, head)
        check_model(self.split)
        self.model = model
        self.loss = make_loss(loss) if isinstance(loss, str) else loss
        if alpha_w == 0 and not self.loss.is_quadratic:
            raise ValueError(f"alpha_w must be > 0 for the {self.loss.name} loss (W* must be "
                             "unique), got 0")
        self.alpha_w = alpha_w
        self.alpha_theta = alpha_theta
        self.config = config or GNvproConfig()
        self.solver_config = self.config.solver()
        self.regularizer = regularizer
        self.objective: ReducedObjective | None = None
        self.state: SolverState | None = None
        self._batch: tuple[Tensor, Tensor] | None = None
        self._batch_versions: tuple[int | None, int | None] = (None, None)
        self._param_versions: tuple[int | None, ...] = ()
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
        self._param_versions = self._current_param_versions()

    def set_batch(self, x: Tensor, y: Tensor) -> None:
        """Evaluate Φ_red, W* and ∇Φ_red at the current θ on (x, y) (2 work units; nothing
        if (x, y) is already the batch). The trust-region radius and the counters carry over,
        so step() on a sequence of batches is the paper's stochastic variant."""
        check_model(self.split)  # cheap; the model may have changed since the last call
        if self._is_batch(x, y):
            return
        c = self.config
        objective = ReducedObjective(  # checks the batch (varpro.batch_targets)
            self.split, self.loss, x, y, self.alpha_w, self.alpha_theta, B=self.regularizer,
            jacobian=c.jacobian, gn_alpha_w=c.gn_alpha_w, jvp_mode=c.jvp_mode,
            inner=InnerOptions(c.inner_rtol, c.inner_atol, c.inner_max_iter),
        )
        check_head_is_last(self.split, x[: min(len(x), 16)])
        old = self.state
        prev = old.pt if old is not None and old.pt.W.shape[0] == self.split.n_outputs else None
        if prev is None:  # warm-start the first inner solve from the model's head
            prev = WarmStart(self.split.head_weights().to(torch.float64))
        try:
            fresh = initial_state(objective, self.theta(), prev)
        except (torch.linalg.LinAlgError, ArithmeticError) as e:
            raise ValueError(f"the starting point cannot be evaluated ({type(e).__name__}: {e}):"
                             " the data or the weights are badly scaled; standardise x and y"
                             ) from e
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
        self._batch_versions = (_version(x), _version(y))
        self._write_back()

    def _is_batch(self, x: Tensor, y: Tensor) -> bool:
        """(x, y) is the current batch: the same tensors, unchanged since (no in-place edit),
        and the model's weights are still the optimiser's (nobody wrote into them)."""
        b = self._batch
        return (b is not None and b[0] is x and b[1] is y
                and self._batch_versions == (_version(x), _version(y))
                and self._param_versions == self._current_param_versions())

    def _current_param_versions(self) -> tuple[int | None, ...]:
        return tuple(_version(p) for p in self.model.parameters())

    # ------------------------------------------------------------------- API
    def step(self, x: Tensor, y: Tensor) -> StepInfo:
        """One outer iteration on the batch (x, y); the model holds the result."""
        with intra_op_threads(self._threads(x)):
            self.set_batch(x, y)
            assert self.objective is not None and self.state is not None
            try:
                state, info = trust_region_step(self.objective, self.state, self.solver_config)
            except (torch.linalg.LinAlgError, ArithmeticError) as e:
                raise ValueError(f"the outer step failed numerically ({type(e).__name__}: {e}); "
                                 "the model and the optimiser are unchanged. The data or the "
                                 "weights are badly scaled: standardise x and y") from e
        self.state = state
        self._write_back()
        return info

    def _threads(self, x: Tensor) -> int | None:
        """config.threads, or one thread for a small CPU problem (gnvpro.threads)."""
        if self.config.threads is not None:
            return self.config.threads
        n_params = sum(p.numel() for p in self.split.feature_params().values())
        n_params += self.split.head.weight.numel()  # the W-side products scale with c·p
        n = x.shape[0] if isinstance(x, Tensor) and x.ndim > 0 else 1  # x is checked later
        return auto_threads(n, n_params, self.split.head.weight.device)

    def evaluate(self, x: Tensor, y: Tensor) -> dict:
        """Metrics of the current model on (x, y) (loss, relative error or accuracy)."""
        check_batch(self.split, x, y)
        check_model(self.split)
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
        max_seconds: float | None = None,
        callback: Callable[[StepInfo], bool | None] | None = None,
        progress: bool = False,
    ) -> History:
        """Iterate until a gradient tolerance, max_iter, max_work (work units) or max_seconds
        (the optimiser's own seconds, validation excluded) of this call is reached.
        callback(record) may return True to stop. Validation metrics go in
        record.metrics["val"]."""
        if max_work is not None:
            max_work = check_real("max_work", max_work, low=0.0, finite=False)
        if max_iter is not None:
            max_iter = check_real("max_iter", max_iter, integer=True, low=0)
        if max_seconds is not None:
            max_seconds = check_real("max_seconds", max_seconds, low=0.0)
        if (max_work is None or max_work == float("inf")) and max_iter is None \
                and max_seconds is None:
            raise ValueError("run() needs a budget: give max_work or max_iter (or max_seconds; "
                             "the gradient tolerance alone rarely stops a run)")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable or None, got {describe(callback)}")
        if val is not None:
            self._check_val(x, val)
        self.set_batch(x, y)
        assert self.state is not None
        records: list[StepInfo] = []
        start_iter, start_work, start_s = self.state.iteration, self.state.work, self.state.seconds
        bar = _progress(progress, max_work, max_iter)
        try:
            while True:
                term = check_termination(
                    self.state, self.solver_config,
                    None if max_iter is None else start_iter + max_iter,
                    None if max_work is None else start_work + max_work,
                    None if max_seconds is None else start_s + max_seconds,
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

    def _check_val(self, x: Tensor, val: object) -> None:
        if not isinstance(val, tuple | list) or len(val) != 2:
            raise TypeError(f"val must be a pair (x_val, y_val) of tensors, got {describe(val)}")
        xv, yv = val
        check_batch(self.split, xv, yv, "val[0] (x_val)", "val[1] (y_val)")
        if isinstance(x, Tensor) and xv.shape[1:] != x.shape[1:]:
            raise ValueError(f"val[0] (x_val) has samples of shape {tuple(xv.shape[1:])} but x "
                             f"has {tuple(x.shape[1:])}: they must match")
        try:
            self.loss.prepare_targets(yv, self.split.n_outputs)
        except ValueError as e:
            raise ValueError(f"val[1] (y_val): {e}") from None

    # ---------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Model weights (copies), settings and the trust-region radius/work counters."""
        s = self.state
        return {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "config": self.config.to_dict(),
            "loss": self.loss.name,
            "alpha_w": self.alpha_w,
            "alpha_theta": self.alpha_theta,
            "radius": None if s is None else s.radius,
            "work": 0.0 if s is None else s.work,
            "iteration": 0 if s is None else s.iteration,
        }

    def load_state_dict(self, sd: dict) -> None:
        """Restore a state_dict(): model weights, α, config, radius and counters (the loss must
        be the same). Everything is checked first; a refused dict changes nothing."""
        if not isinstance(sd, dict):
            raise TypeError(f"load_state_dict expects the dict of GNvpro.state_dict(), got "
                            f"{describe(sd)}")
        missing = {"model", "radius", "work", "iteration"} - set(sd)
        if missing:
            raise ValueError(f"not a GNvpro state dict: missing {sorted(missing)}")
        _check_model_state(self.model, sd["model"])
        radius = sd["radius"]
        if radius is not None:
            radius = check_real("state_dict['radius']", radius, low=0.0, low_inclusive=False)
        work = check_real("state_dict['work']", sd["work"], low=0.0)
        iteration = check_real("state_dict['iteration']", sd["iteration"], integer=True, low=0)
        if "loss" in sd and sd["loss"] != self.loss.name:
            raise ValueError(f"the state dict was saved with loss {sd['loss']!r} but this "
                             f"optimiser uses {self.loss.name!r}: create GNvpro(model, "
                             f"loss={sd['loss']!r}) to load it")
        alpha_w = check_real("state_dict['alpha_w']", sd.get("alpha_w", self.alpha_w), low=0.0)
        alpha_theta = check_real("state_dict['alpha_theta']",
                                 sd.get("alpha_theta", self.alpha_theta), low=0.0)
        if alpha_w == 0 and not self.loss.is_quadratic:
            raise ValueError(f"state_dict['alpha_w'] must be > 0 for the {self.loss.name} loss")
        config = self.config
        if "config" in sd:
            config = config_from_dict(GNvproConfig, sd["config"], "state_dict['config']")
        solver_config = config.solver()
        backup = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        try:
            self.model.load_state_dict(sd["model"])
        except Exception:
            self.model.load_state_dict(backup)
            raise
        self.alpha_w, self.alpha_theta = alpha_w, alpha_theta
        self.config, self.solver_config = config, solver_config
        self.objective = None
        self.state = None
        self._batch = None
        self._resume = (radius, work, iteration)


def _version(t: Tensor) -> int | None:
    """The in-place version counter of t (None for inference tensors, which have none)."""
    try:
        return t._version
    except RuntimeError:
        return None


def _check_model_state(model: nn.Module, msd: object) -> None:
    """state_dict['model'] fits `model` exactly: same keys, tensors of the same shapes, finite."""
    if not isinstance(msd, dict):
        raise TypeError(f"state_dict['model'] must be a dict of tensors, got {describe(msd)}")
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(msd)), sorted(set(msd) - set(own))
    if missing or unexpected:
        raise ValueError(f"state_dict['model'] does not fit this model: missing keys {missing}, "
                         f"unexpected keys {unexpected}")
    for k, v in msd.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"state_dict['model'][{k!r}] must be a tensor, got {describe(v)}")
        if v.shape != own[k].shape:
            raise ValueError(f"state_dict['model'][{k!r}] has shape {tuple(v.shape)} but the "
                             f"model's is {tuple(own[k].shape)}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"state_dict['model'][{k!r}] contains NaN/Inf values")


def _train_metrics(opt: GNvpro, y: Tensor) -> dict:
    """Training metrics from the predictions already at hand (no extra forward pass)."""
    assert opt.state is not None
    return prediction_metrics(opt.loss, opt.state.pt.S, y, opt.split.n_outputs)


def _progress(enabled: bool, max_work: float | None, max_iter: int | None):
    total = max_work if max_work is not None else max_iter
    return bar(enabled, total, "WU" if max_work is not None else "it", leave=False)
