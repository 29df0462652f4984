"""ADAM and SGD (Nesterov momentum) on (θ, W) jointly, W starting at W*(θ0) (docs/method.md §5).

One step is one epoch over shuffled mini-batches of the current batch, each minimising

    Φ_B(θ, W) = L(Ẑ_B(θ) Wᵀ, C_B)/|B| + (α_W/2)‖W‖² + (α_θ/2)‖Bθ‖²

(torch.Generator seeded with config.seed; the last mini-batch may be smaller). Work units: 2 per
epoch (a forward and a backward pass over the batch), 2 for the start.

Data-parallel (``reducer=DistributedReducer(n_local)``: each process holds a contiguous shard of
the rows, in process order): every process draws the same permutation of all n rows, takes the
rows of each mini-batch B that are its own, and the model runs under
torch.nn.parallel.DistributedDataParallel on the loss P·Σ_{i∈B, own} ℓ_i/|B| + regularisers,
whose gradient average over the P processes is the one-process gradient of Φ_B: the same epochs
as one process on all rows (a global shuffle), up to the rounding of the sums' order.

ADAM is torch.optim.Adam with the standard bias correction 1 − β^t, t = the mini-batch count;
the reference code used the epoch number for t, which we do not copy.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..head import check_head_is_last
from ..losses import Loss
from ..metrics import predict
from ..params import ParamLayout
from ..reduce import SampleReducer
from ..regularizer import LinearMap, Regularizer
from ..solver import StepInfo, Termination
from ..targets import batch_targets
from ..validate import check_real, describe
from ..varpro import ReducedObjective, WarmStart
from .base import InnerSettings, Iterate, ModelMethod

__all__ = ["FirstOrder", "FirstOrderConfig", "OPTIMIZERS"]

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class FirstOrderConfig(InnerSettings):
    """Settings of the mini-batch baselines (and of the W*(θ0) solve)."""

    optimizer: str = "adam"  # or "sgd" (momentum, Nesterov)
    lr: float = 1e-3
    batch_size: int = 32
    momentum: float = 0.9  # SGD
    nesterov: bool = True  # SGD, with momentum > 0
    seed: int = 0  # the mini-batch shuffling

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


class FirstOrder(ModelMethod):
    """ADAM / SGD epochs on (θ, W) through the method protocol (gnvpro.methods.base)."""

    config_type = FirstOrderConfig
    step_work = 2.0  # one epoch: a forward and a backward pass over the batch

    def __init__(self, model: nn.Module, loss: str | Loss = "least_squares",
                 alpha_w: float = 1e-10, alpha_theta: float = 1e-10, head: str | None = None,
                 config: FirstOrderConfig | None = None,
                 regularizer: LinearMap | None = None, reducer: SampleReducer | None = None
                 ) -> None:
        """reducer: a DistributedReducer makes this process's batches its shard of the rows
        (module docstring); None: one process."""
        if reducer is not None and not isinstance(reducer, SampleReducer):
            raise TypeError(f"reducer must be a SampleReducer, got {describe(reducer)}")
        super().__init__(model, loss, alpha_w, alpha_theta, head, config, regularizer)
        self.reducer = reducer
        self._offset = 0  # the first global row of this process's shard
        c = self.config
        self.feature_params = self.split.feature_params()
        self.head_params = [self.split.head.weight] + (
            [self.split.head.bias] if self.split.has_bias else [])
        self.optimizer = self._torch_optimizer(c)
        self.generator = torch.Generator().manual_seed(c.seed)
        self.own_work = self.seconds = self.inner_seconds = 0.0
        self.iteration = 0
        self.reg: Regularizer | None = None
        self._xC: tuple[Tensor, Tensor] | None = None
        self._current: Iterate | None = None

    def _torch_optimizer(self, c: FirstOrderConfig) -> torch.optim.Optimizer:
        """torch.optim.Adam or SGD (Nesterov momentum) over θ and the head, as ``c`` says."""
        params = [*self.feature_params.values(), *self.head_params]
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr)
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum,
                               nesterov=c.nesterov and c.momentum > 0)

    # ------------------------------------------------------------------ protocol
    def set_batch(self, x: Tensor, y: Tensor) -> None:
        """The targets of (x, y); on the first batch also W*(θ0) (2 work units)."""
        if self._batch.same(x, y):
            return
        t0 = time.perf_counter()
        if self.reg is None:  # the common start: θ0 with W*(θ0)
            obj = ReducedObjective(self.split, self.loss, x, y, self.alpha_w, self.alpha_theta,
                                   B=self.regularizer, inner=self.config.inner(),
                                   reducer=self.reducer)
            check_head_is_last(self.split, x[: min(len(x), 16)])
            pt = obj.evaluate(self.theta(), WarmStart(self.split.head_weights().to(torch.float64)))
            self.split.set_head_weights(pt.W)
            self.reg = Regularizer(self.alpha_theta, obj.features.layout, self.regularizer)
            self._current = Iterate(pt.value, pt.loss, pt.S)
            self.own_work += 2.0
            self.inner_seconds += pt.inner.seconds
            C = obj.C
        else:  # a new batch: its targets (Φ on it is evaluated when a record asks)
            C = batch_targets(self.split, self.loss, x, y)
            self._current = None
        self._xC = (x, C.to(device=x.device, dtype=self.split.head.weight.dtype))
        if self._sharded():
            sizes = self.reducer.stack(torch.tensor([len(x)], device=x.device))
            self._offset = int(sizes[:self.reducer.part].sum())
        self.seconds += time.perf_counter() - t0
        self._batch.remember(x, y)

    def _sharded(self) -> bool:
        return self.reducer is not None and self.reducer.parts > 1

    def _objective(self, S: Tensor, C: Tensor, mean: SampleReducer | None = None
                   ) -> tuple[Tensor, Tensor]:
        """(Φ_B, L/|B|) differentiable in the model's weights; ``mean`` averages the loss's
        row sum (default: over the rows of S)."""
        L = (mean or SampleReducer(C.shape[0])).mean(self.loss.value(S, C))
        ridge_w, ridge_theta = self._penalties()
        return L + ridge_w + ridge_theta, L

    def _penalties(self) -> tuple[Tensor, Tensor]:
        """(α_W/2)‖W‖² and (α_θ/2)‖Bθ‖², differentiable in the model's weights."""
        assert self.reg is not None
        theta = torch.cat([p.reshape(-1) for p in self.feature_params.values()])
        w2 = sum(p.square().sum() for p in self.head_params)
        return 0.5 * self.alpha_w * w2, self.reg.value(theta)

    def _epoch(self, x: Tensor, C: Tensor) -> None:
        """One epoch of mini-batch steps: one process, or this process's rows of each global
        mini-batch under DistributedDataParallel (module docstring). The DDP wrapper lives for
        the epoch alone: one alive at destroy_process_group can abort the process at exit
        ("terminate called without an active exception"; tests/test_distributed.py checks
        that none outlives its epoch)."""
        if not self._sharded():
            self._steps(self.model, x, C, sharded=False)
            return
        from torch.nn.parallel import DistributedDataParallel

        group = getattr(self.reducer, "group", None)
        self._steps(DistributedDataParallel(self.model, process_group=group), x, C, sharded=True)

    def _steps(self, net: nn.Module, x: Tensor, C: Tensor, sharded: bool) -> None:
        """The mini-batch steps of one epoch through ``net`` (the model, or its DDP wrapper)."""
        b = self.config.batch_size
        n = self.reducer.n if sharded else len(x)
        perm = torch.randperm(n, generator=self.generator).to(x.device)
        lo = self._offset
        for i in range(0, n, b):
            idx = perm[i : i + b]
            self.optimizer.zero_grad(set_to_none=True)
            if not sharded:
                self._objective(net(x[idx]), C[idx])[0].backward()
            else:  # the DDP average over P processes of P·(own rows' sum)/|B| + regularisers
                own = idx[(idx >= lo) & (idx < lo + len(x))] - lo
                scale = self.reducer.parts / len(idx)
                S = net(x[own])  # no own rows: a zero loss, the same graph for DDP
                loss = scale * self.loss.value(S, C[own]) if len(own) else 0.0 * S.sum()
                ridge_w, ridge_theta = self._penalties()
                (loss + ridge_w + ridge_theta).backward()
            self.optimizer.step()

    def step(self, x: Tensor | None = None, y: Tensor | None = None) -> StepInfo:
        """One epoch of mini-batch steps over (x, y)."""
        self._check_step(x, y)
        self.set_batch(x, y)
        assert self._xC is not None
        x, C = self._xC
        t0 = time.perf_counter()
        self._epoch(x, C)
        self.seconds += time.perf_counter() - t0
        self.own_work += self.step_work
        self.iteration += 1
        self._current = None
        self._batch.weights_written()
        return StepInfo(iteration=self.iteration, loss=float("nan"), data_loss=float("nan"),
                        grad_norm=float("nan"), work_units=self.own_work, seconds=self.seconds,
                        inner_seconds=self.inner_seconds, extra={"epoch": self.iteration})

    @torch.no_grad()
    def current(self) -> Iterate:
        """Φ and L on the whole current batch (forward passes in blocks of rows,
        gnvpro.metrics.predict; not counted in work)."""
        if self._current is None:
            assert self._xC is not None
            x, C = self._xC
            S = predict(self.model, x)
            phi, L = self._objective(S, C, self.reducer)
            self._current = Iterate(float(phi), float(L), S)
        return self._current

    def termination(self) -> Termination:
        return Termination.RUNNING

    # --------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Optimiser state only (as torch.optim): the settings (method, config, loss, α_W,
        α_θ), a copy of the torch optimiser's state (later steps do not change it), the
        shuffling generator's state, the counters and whether W*(θ0) was solved ("started")."""
        return {**self._settings(), "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "generator": self.generator.get_state(), "work": self.own_work,
                "seconds": self.seconds, "inner_seconds": self.inner_seconds,
                "iteration": self.iteration, "started": self.reg is not None}

    def load_state_dict(self, sd: dict) -> None:
        """Make a state_dict() this optimiser's state (an assignment: settings, α and config
        adopted, as torch.optim adopts a saved param_group's; the loss must be the same).
        Everything is checked first; a refused dict changes nothing. The model keeps its
        weights (no new W*(θ0) once started): the next epoch is the uninterrupted run's."""
        config, alpha_w, alpha_theta = self._check_settings(
            sd, {"optimizer", "generator", "work", "iteration"})
        counters = [check_real(f"state_dict[{k!r}]", sd.get(k, 0.0), low=0.0)
                    for k in ("work", "seconds", "inner_seconds")]
        iteration = check_real("state_dict['iteration']", sd.get("iteration"), integer=True,
                               low=0)
        optimizer = self.optimizer if config == self.config else self._torch_optimizer(config)
        generator = torch.Generator()
        backup = optimizer.state_dict()
        try:
            optimizer.load_state_dict(sd["optimizer"])
            generator.set_state(sd["generator"])
        except Exception:
            optimizer.load_state_dict(backup)
            raise
        self.config, self.alpha_w, self.alpha_theta = config, alpha_w, alpha_theta
        self.optimizer, self.generator = optimizer, generator
        self.own_work, self.seconds, self.inner_seconds = counters
        self._work_mark = None
        self.iteration = iteration
        self._batch.forget()
        self._current = None
        self.reg = None
        if sd.get("started"):
            layout = ParamLayout.of(self.split.feature_params())
            self.reg = Regularizer(self.alpha_theta, layout, self.regularizer)
