"""Antisymmetric RK4 residual network of the GNvpro paper (features part, no affine head).

Newman, Ruthotto, Hart, van Bloemen Waanders (2021), section on the surrogate and Indian Pines
networks; reference: Meganet.m commit bf96b8e (see ``shared/reference/README.md``, section 2).

Row convention: inputs ``x`` are ``(n, d)`` and features ``(n, width)``.

    z0 = tanh(x K_openᵀ [+ b_open])
    dz/dt = f(z, t) = tanh(z K(t)ᵀ + b(t)),     K(t) = Θ(t) − Θ(t)ᵀ − shift·I,   t ∈ [0, T]

integrated with ``n_steps`` classical RK4 steps of size h = T/n_steps.  Θ and b live on the
weight time nodes t_j = linspace(0, T, n_nodes) and are interpolated piecewise-linearly with the
reference rule: take the last node t_i ≤ t; at (or after) the last node use its value, otherwise
the weights ((t_{i+1} − t)/d, (t − t_i)/d) on nodes (i, i+1).

Multilevel training refines the weight grid by inserting midpoints (linear prolongation).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from fractions import Fraction

import torch
from torch import Tensor, nn

__all__ = [
    "AntisymmetricResNet",
    "interpolation_weights",
    "paper_network",
    "refine_network",
    "time_smoothness",
]


def interpolation_weights(
    tau: float | Fraction, nodes: Sequence[float | Fraction]
) -> list[tuple[int, float]]:
    """Reference piecewise-linear interpolation rule (Meganet.m bf96b8e).

    Returns ``[(i, w_i), ...]`` with Σ w_i = 1 such that θ(τ) = Σ w_i θ_i.  With i the last node
    with ``nodes[i] <= tau``: if i is the last node the result is ``[(i, 1.0)]``; otherwise
    ``[(i, (t_{i+1} − τ)/d), (i+1, (τ − t_i)/d)]``, d = t_{i+1} − t_i.  Zero weights are dropped.
    Pass :class:`fractions.Fraction` values for exact arithmetic.
    """
    nodes = list(nodes)
    if not nodes:
        raise ValueError("interpolation_weights: need at least one node")
    if tau < nodes[0]:
        raise ValueError(f"interpolation_weights: tau={tau} lies before the first node {nodes[0]}")
    i = max(j for j, t in enumerate(nodes) if t <= tau)
    if i == len(nodes) - 1:
        return [(i, 1.0)]
    d = nodes[i + 1] - nodes[i]
    w0 = (nodes[i + 1] - tau) / d
    w1 = (tau - nodes[i]) / d
    return [(j, float(w)) for j, w in ((i, w0), (i + 1, w1)) if w != 0]


class AntisymmetricResNet(nn.Module):
    """Opening tanh layer followed by an antisymmetric RK4 ResNet (the paper's feature map).

    Parameters: ``opening`` (``nn.Linear(in_features, width, bias=open_bias)``), ``theta``
    ``(n_nodes, width, width)`` (full matrix; only Θ − Θᵀ enters K, the diagonal is redundant and
    initialised to 0, as in the reference's flat vector), ``bias`` ``(n_nodes, width)``.

    Initialisation (``init=True``): opening weight N(0, 2/in_features); Θ node 0 off-diagonal
    N(0, 2/width), zero diagonal, copied to all nodes; all biases zero.  ``init=False`` leaves
    every parameter zero (to be loaded).
    """

    def __init__(
        self,
        in_features: int,
        width: int,
        n_nodes: int = 2,
        T: float = 1.0,
        n_steps: int = 1,
        open_bias: bool = False,
        shift: float = 1e-4,
        init: bool = True,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if n_nodes < 1 or n_steps < 1 or in_features < 1 or width < 1:
            raise ValueError(
                "AntisymmetricResNet: in_features, width, n_nodes and n_steps must be >= 1, got "
                f"{in_features}, {width}, {n_nodes}, {n_steps}"
            )
        if not T > 0:
            raise ValueError(f"AntisymmetricResNet: final time T must be > 0, got {T}")
        self.in_features = int(in_features)
        self.width = int(width)
        self.n_nodes = int(n_nodes)
        self.T = float(T)
        self.n_steps = int(n_steps)
        self.open_bias = bool(open_bias)
        self.shift = float(shift)
        fk = {"dtype": dtype, "device": device}
        self.opening = nn.Linear(in_features, width, bias=open_bias, **fk)
        self.theta = nn.Parameter(torch.zeros(n_nodes, width, width, **fk))
        self.bias = nn.Parameter(torch.zeros(n_nodes, width, **fk))
        with torch.no_grad():
            self.opening.weight.zero_()
            if self.opening.bias is not None:
                self.opening.bias.zero_()
        if init:
            self.reset_parameters(generator)
        self._schedule = self._build_schedule()

    # ----------------------------------------------------------------------------------------
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Paper initialisation: N(0, 2/fan_in) dense weights, equal Θ at all nodes, zero biases."""
        w, p = self.opening.weight, self.theta
        with torch.no_grad():
            std_open = math.sqrt(2.0 / self.in_features)
            w.copy_(
                torch.randn(w.shape, generator=generator, dtype=w.dtype, device="cpu").to(w.device)
                * std_open
            )
            if self.opening.bias is not None:
                self.opening.bias.zero_()
            th0 = torch.randn(
                (self.width, self.width), generator=generator, dtype=p.dtype, device="cpu"
            ) * math.sqrt(2.0 / self.width)
            th0.fill_diagonal_(0.0)
            p.copy_(th0.to(p.device).expand_as(p))
            self.bias.zero_()

    @property
    def nodes(self) -> list[float]:
        """Weight time nodes t_j = linspace(0, T, n_nodes)."""
        return [self.T * float(f) for f in self._node_fracs()]

    @property
    def h(self) -> float:
        """RK4 step size T / n_steps."""
        return self.T / self.n_steps

    def _node_fracs(self) -> list[Fraction]:
        if self.n_nodes == 1:
            return [Fraction(0)]
        return [Fraction(j, self.n_nodes - 1) for j in range(self.n_nodes)]

    def _build_schedule(self) -> list[list[tuple[int, float]]]:
        """Interpolation weights for the 3 distinct stage times t_k, t_k + h/2, t_k + h of every
        step, computed exactly (times in units of T as fractions)."""
        nodes = self._node_fracs()
        sched = []
        for k in range(self.n_steps):
            for s in range(3):
                tau = Fraction(2 * k + s, 2 * self.n_steps)
                sched.append(interpolation_weights(tau, nodes))
        return sched

    def stage_times(self) -> list[float]:
        """Times of the 4·n_steps RK4 stages (t_k, t_k+h/2, t_k+h/2, t_k+h for every step)."""
        out = []
        for k in range(self.n_steps):
            for s in (0, 1, 1, 2):
                out.append(self.T * (2 * k + s) / (2 * self.n_steps))
        return out

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, width={self.width}, n_nodes={self.n_nodes}, "
            f"T={self.T}, n_steps={self.n_steps}, open_bias={self.open_bias}, shift={self.shift}"
        )

    # ----------------------------------------------------------------------------------------
    def _weights_at(self, entry: list[tuple[int, float]]) -> tuple[Tensor, Tensor]:
        """(K(τ), b(τ)) from the interpolation weights; Θ is interpolated, then K is formed."""
        th, b = None, None
        for j, w in entry:
            tj, bj = self.theta[j], self.bias[j]
            if w != 1.0:  # w is a Python float: no branching on tensor values
                tj, bj = w * tj, w * bj
            th = tj if th is None else th + tj
            b = bj if b is None else b + bj
        eye = torch.eye(self.width, dtype=th.dtype, device=th.device)
        K = th - th.transpose(-1, -2) - self.shift * eye
        return K, b

    def weights_at(self, t: float) -> tuple[Tensor, Tensor]:
        """(K(t), b(t)) at time t ∈ [0, T] by the reference interpolation rule."""
        return self._weights_at(interpolation_weights(float(t) / self.T, self._node_fracs()))

    def open(self, x: Tensor) -> Tensor:
        """Opening layer z0 = tanh(x K_openᵀ [+ b_open])."""
        return torch.tanh(self.opening(x))

    def _integrate(self, x: Tensor, record: list[Tensor] | None) -> Tensor:
        z = self.open(x)
        h = self.h
        for k in range(self.n_steps):
            Ka, ba = self._weights_at(self._schedule[3 * k])
            Km, bm = self._weights_at(self._schedule[3 * k + 1])
            Kb, bb = self._weights_at(self._schedule[3 * k + 2])
            if record is not None:
                record.append(z)
            a1 = torch.tanh(z @ Ka.transpose(-1, -2) + ba)
            z2 = z + (h / 2) * a1
            if record is not None:
                record.append(z2)
            a2 = torch.tanh(z2 @ Km.transpose(-1, -2) + bm)
            z3 = z + (h / 2) * a2
            if record is not None:
                record.append(z3)
            a3 = torch.tanh(z3 @ Km.transpose(-1, -2) + bm)
            z4 = z + h * a3
            if record is not None:
                record.append(z4)
            a4 = torch.tanh(z4 @ Kb.transpose(-1, -2) + bb)
            z = z + h * (a1 / 6 + a2 / 3 + a3 / 3 + a4 / 6)
        return z

    def forward(self, x: Tensor) -> Tensor:
        """Features Z(x) of shape (n, width)."""
        return self._integrate(x, None)

    def stages(self, x: Tensor) -> list[Tensor]:
        """The 4·n_steps RK4 stage inputs z_k, z_k + h/2·A1, z_k + h/2·A2, z_k + h·A3 (each
        (n, width)); ``stages(x)[0]`` is the opening output z0."""
        rec: list[Tensor] = []
        self._integrate(x, rec)
        return rec

    # ----------------------------------------------------------------------------------------
    def refine(self, steps_follow_grid: bool = False) -> AntisymmetricResNet:
        """Multilevel prolongation: a new module with the midpoints inserted in the weight grid.

        n_nodes → 2·n_nodes − 1;  θ_new[2j] = θ[j],  θ_new[2j+1] = (θ[j] + θ[j+1]) / 2 (for Θ and
        b); the opening layer and existing node values are copied bit-exactly.  ``n_steps``
        becomes the new number of intervals 2·(n_nodes − 1) if ``steps_follow_grid`` (Indian
        Pines variant), else it is unchanged (CDR/DCR variant).
        """
        n_new = 2 * self.n_nodes - 1
        p = self.theta
        new = AntisymmetricResNet(
            self.in_features,
            self.width,
            n_nodes=n_new,
            T=self.T,
            n_steps=max(n_new - 1, 1) if steps_follow_grid else self.n_steps,
            open_bias=self.open_bias,
            shift=self.shift,
            init=False,
            dtype=p.dtype,
            device=p.device,
        )
        with torch.no_grad():
            new.opening.load_state_dict(self.opening.state_dict())
            for old_t, new_t in ((self.theta, new.theta), (self.bias, new.bias)):
                new_t[0::2] = old_t
                new_t[1::2] = 0.5 * (old_t[:-1] + old_t[1:])
        new.train(self.training)
        return new


def time_smoothness(features: nn.Module) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
    """Linear regulariser operator B for α_θ/2 ‖Bθ‖² on a dict of named parameters.

    For every :class:`AntisymmetricResNet` submodule (names as ``features.named_parameters()``
    gives them), Θ and b are mapped to forward differences along the node axis scaled by
    1/√Δt, Δt = T/(n_nodes − 1):  (Bθ)_j = (θ_{j+1} − θ_j)/√Δt, so ‖Bθ‖² ≈ ∫₀ᵀ ‖∂_t θ‖² dt.
    With one node the difference is empty.  Every other entry passes through unchanged.
    The returned function is linear and traceable by torch.func.
    """
    scales: dict[str, float] = {}
    for prefix, mod in features.named_modules():
        if isinstance(mod, AntisymmetricResNet):
            dt = mod.T / max(mod.n_nodes - 1, 1)
            for leaf in ("theta", "bias"):
                scales[f"{prefix}.{leaf}" if prefix else leaf] = 1.0 / math.sqrt(dt)

    def B(named: dict[str, Tensor]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for name, t in named.items():
            s = scales.get(name)
            out[name] = t if s is None else (t[1:] - t[:-1]) * s
        return out

    return B


def paper_network(
    in_features: int,
    out_features: int,
    width: int,
    n_nodes: int = 2,
    T: float = 1.0,
    n_steps: int = 1,
    open_bias: bool = False,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    *,
    shift: float = 1e-4,
    device: torch.device | str | None = None,
) -> nn.Sequential:
    """``nn.Sequential(AntisymmetricResNet, nn.Linear(width, out_features))``.

    The head W = [weight, bias] is solved by variable projection; it is initialised to zero.
    """
    feats = AntisymmetricResNet(
        in_features,
        width,
        n_nodes=n_nodes,
        T=T,
        n_steps=n_steps,
        open_bias=open_bias,
        shift=shift,
        generator=generator,
        dtype=dtype,
        device=device,
    )
    head = nn.Linear(width, out_features, dtype=dtype, device=device)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    return nn.Sequential(feats, head)


def refine_network(seq: nn.Sequential, steps_follow_grid: bool = False) -> nn.Sequential:
    """Refine every :class:`AntisymmetricResNet` in ``seq`` (see
    :meth:`AntisymmetricResNet.refine`); all other modules (the head) are deep-copied."""
    if not any(isinstance(m, AntisymmetricResNet) for m in seq):
        raise ValueError("refine_network: the Sequential contains no AntisymmetricResNet")
    mods = [
        m.refine(steps_follow_grid) if isinstance(m, AntisymmetricResNet) else copy.deepcopy(m)
        for m in seq
    ]
    return nn.Sequential(*mods)
