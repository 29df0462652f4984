"""The feature map Z(θ) for a fixed batch x, with its Jacobian J_Z = ∂vec(Z)/∂θ as operators.

At each point θ one forward pass records the autograd graph of Z(θ) (a `Linearisation`); every
product of that point reuses it:

    J_Zᵀ E = ∂⟨Z, E⟩/∂θ                    one backward pass through the recorded graph
    J_Z v  = ∂⟨J_Zᵀ u, v⟩/∂u               "double backward": the graph of u ↦ J_Zᵀ u is recorded
                                            once per point (u a dummy), then each product is one
                                            backward pass through it (J_Zᵀ u is linear in u)

`jvp_mode` picks how J_Z v is formed: "double-backward" (above), "jvp" (torch.func.jvp, forward
mode, a new forward pass per product) or "linearize" (torch.func.linearize, traced once per
point: a costly trace, then the cheapest products on convolutional networks). "auto" (the
default) is the rule measured by benchmarks/gn_product_cost.py: "linearize" when the features
contain a convolution, "double-backward" otherwise.
θ travels as a flat float64 vector; the network runs in its own dtype.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import jvp, linearize

from .head import HeadSplit
from .params import ParamLayout

JVP_MODES = ("auto", "double-backward", "jvp", "linearize")


def resolve_jvp_mode(mode: str, model: torch.nn.Module) -> str:
    """The J_Z mode to use for `model`: `mode` itself unless it is "auto" (see module doc)."""
    if mode not in JVP_MODES:
        raise ValueError(f"jvp_mode must be one of {JVP_MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    conv = any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in model.modules())
    return "linearize" if conv else "double-backward"


class Linearisation:
    """Z(θ) at one θ with its recorded graph: E ↦ J_Zᵀ E (call) and v ↦ J_Z v (`jvp`)."""

    def __init__(self, fmap: FeatureMap, theta: Tensor) -> None:
        self.fmap, self.theta = fmap, theta
        named = fmap.params(theta)
        self.leaves = [t.detach().requires_grad_() for t in named.values()]
        with torch.enable_grad():
            self.z = fmap._f(dict(zip(named, self.leaves, strict=True)))
        self._u: Tensor | None = None
        self._grad_u: list[Tensor] | None = None  # the entries of J_Zᵀu that depend on u
        self._keep: list[int] = []  # their positions among the parameters
        self._other: Callable[[Tensor], Tensor] | None = None

    def _flat(self, grads: tuple[Tensor | None, ...]) -> Tensor:
        parts = [
            torch.zeros(leaf.numel(), dtype=torch.float64, device=leaf.device) if g is None
            else g.reshape(-1).to(torch.float64)
            for g, leaf in zip(grads, self.leaves, strict=True)
        ]
        return torch.cat(parts)

    def __call__(self, E: Tensor) -> Tensor:
        """J_Zᵀ E (flat float64) for E ∈ R^{n×m}."""
        if not self.z.requires_grad:
            return torch.zeros(self.fmap.layout.size, dtype=torch.float64, device=E.device)
        grads = torch.autograd.grad(self.z, self.leaves, E.to(self.z.dtype), retain_graph=True,
                                    allow_unused=True)
        return self._flat(grads)

    def jvp(self, v: Tensor) -> Tensor:
        """J_Z v ∈ R^{n×m} (float64) for a flat direction v."""
        mode = self.fmap.jvp_mode
        if mode != "double-backward":
            if self._other is None:
                self._other = self.fmap.forward_mode_jvp(self.theta)
            return self._other(v)
        if not self.z.requires_grad:
            return torch.zeros(self.z.shape, dtype=torch.float64, device=self.z.device)
        if self._grad_u is None:
            u = torch.zeros_like(self.z, requires_grad=True)
            with torch.enable_grad():
                g = torch.autograd.grad(self.z, self.leaves, u, create_graph=True,
                                        allow_unused=True)
            self._u = u
            self._grad_u = [t for t in g if t is not None and t.requires_grad]
            self._keep = [i for i, t in enumerate(g) if t is not None and t.requires_grad]
        if not self._grad_u:
            return torch.zeros(self.z.shape, dtype=torch.float64, device=self.z.device)
        vs = list(self.fmap.layout.unflatten(v, self.fmap.dtype).values())
        (dz,) = torch.autograd.grad(self._grad_u, self._u, [vs[i] for i in self._keep],
                                    retain_graph=True)
        return dz.to(torch.float64)


class FeatureMap:
    """θ ↦ Z(θ) ∈ R^{n×m} on a fixed batch x."""

    def __init__(self, split: HeadSplit, x: Tensor, jvp_mode: str = "auto") -> None:
        jvp_mode = resolve_jvp_mode(jvp_mode, split.model)
        self.split = split
        self.x = x
        self.layout = ParamLayout.of(split.feature_params())
        first = next(iter(split.feature_params().values()))
        self.dtype = first.dtype
        self.jvp_mode = jvp_mode

    def _f(self, params: dict[str, Tensor]) -> Tensor:
        return self.split.features(params, self.x)

    def params(self, theta: Tensor) -> dict[str, Tensor]:
        return self.layout.unflatten(theta, self.dtype)

    def __call__(self, theta: Tensor) -> Tensor:
        with torch.no_grad():
            return self._f(self.params(theta))

    def linearise(self, theta: Tensor) -> Linearisation:
        """Z(θ) with its graph, for J_Zᵀ E and J_Z v at θ (any number of times)."""
        return Linearisation(self, theta)

    def with_vjp(self, theta: Tensor) -> tuple[Tensor, Linearisation]:
        """Z(θ) and E ↦ J_Zᵀ E (flat float64), reusable any number of times."""
        lin = self.linearise(theta)
        return lin.z, lin

    def forward_mode_jvp(self, theta: Tensor) -> Callable[[Tensor], Tensor]:
        """v ↦ J_Z v by torch.func (jvp_mode "jvp" or "linearize")."""
        p = self.params(theta)
        if self.jvp_mode == "linearize":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                _, lin = linearize(self._f, p)
            return lambda v: lin(self.layout.unflatten(v, self.dtype)).to(torch.float64)

        def apply(v: Tensor) -> Tensor:
            _, dz = jvp(self._f, (p,), (self.layout.unflatten(v, self.dtype),))
            return dz.to(torch.float64)

        return apply

    def jvp_fn(self, theta: Tensor) -> Callable[[Tensor], Tensor]:
        """v ↦ J_Z v ∈ R^{n×m} (float64) at θ."""
        if self.jvp_mode == "double-backward":
            return self.linearise(theta).jvp
        return self.forward_mode_jvp(theta)
