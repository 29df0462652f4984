"""Split a model into its features Z = F(x; θ) and its affine head S = Z W̃ᵀ + b.

Supported: an ``nn.Sequential`` whose last module is ``nn.Linear``, or any module with
``head="dotted.name"`` naming an ``nn.Linear`` submodule that is applied last. The split is
verified on a probe batch: ``head(features(x))`` must equal ``model(x)``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call


class _HeadReached(Exception):  # noqa: N818 - control flow, not an error
    """Stops a forward pass at the head, carrying the head's input."""

    def __init__(self, z: Tensor) -> None:
        super().__init__("head reached")
        self.z = z


@dataclass
class HeadSplit:
    """The model, the name of its affine head, and the feature parameters θ (all others)."""

    model: nn.Module
    head_name: str
    head: nn.Linear

    @property
    def has_bias(self) -> bool:
        return self.head.bias is not None

    @property
    def n_features(self) -> int:
        return self.head.in_features

    @property
    def n_outputs(self) -> int:
        return self.head.out_features

    def feature_params(self) -> dict[str, Tensor]:
        """θ: every trainable parameter of the model that is not in the head."""
        prefix = self.head_name + "."
        return {
            k: p
            for k, p in self.model.named_parameters()
            if not k.startswith(prefix) and p.requires_grad
        }

    def __post_init__(self) -> None:
        # an nn.Sequential ending in its head: the features are the other modules, in order
        self._prefix: nn.Sequential | None = None
        if isinstance(self.model, nn.Sequential) and self.head_name == str(len(self.model) - 1):
            self._prefix = nn.Sequential(OrderedDict(list(self.model.named_children())[:-1]))

    def features(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """Z = F(x; θ), the input of the head, evaluated functionally with the given θ
        (torch.func friendly). The model is never modified: an nn.Sequential runs without its
        last module; any other model runs until a pre-hook on the head stops it."""
        if self.head_name == "":
            raise ValueError("the model is only an affine layer: there are no features to train")
        if self._prefix is not None:
            return functional_call(self._prefix, params, (x,), strict=False)

        def stop(module: nn.Module, args: tuple) -> None:
            raise _HeadReached(args[0])

        handle = self.head.register_forward_pre_hook(stop)
        try:
            functional_call(self.model, params, (x,), strict=False)
        except _HeadReached as reached:
            return reached.z
        finally:
            handle.remove()
        raise ValueError(f"the model's forward never called its head {self.head_name!r}: name "
                         "the affine layer that produces the output with head='...'")

    def head_weights(self) -> Tensor:
        """W = [W̃, b] ∈ R^{c×p}, p = m+1 with bias (m without)."""
        w = self.head.weight.detach()
        if self.has_bias:
            return torch.cat([w, self.head.bias.detach()[:, None]], dim=1)
        return w.clone()

    @torch.no_grad()
    def set_head_weights(self, W: Tensor) -> None:
        """Write W = [W̃, b] into the head (cast to the head's dtype and device)."""
        m = self.n_features
        self.head.weight.copy_(W[:, :m].to(self.head.weight))
        if self.has_bias:
            self.head.bias.copy_(W[:, m].to(self.head.bias))


def split_model(
    model: nn.Module, head: str | None = None, probe: Tensor | None = None
) -> HeadSplit:
    """Locate the affine head of `model`; check on `probe` (if given) that it is applied last.

    Raises TypeError / ValueError with a fix when the model has no affine last layer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's wrapper
        raise TypeError("model is a torch.compile'd module: pass the original module "
                        "(model._orig_mod, or the module before torch.compile); GNvpro calls its "
                        "feature layers itself through torch.func")
    if head is not None and not isinstance(head, str):
        raise TypeError(f"head must be the dotted name of an nn.Linear submodule (a str) or None, "
                        f"got {head!r} ({type(head).__name__})")
    if head is None:
        if not isinstance(model, nn.Sequential) or len(model) == 0:
            raise TypeError(
                "cannot find the affine head: pass an nn.Sequential whose last module is "
                "nn.Linear, or name the head submodule with head='dotted.name'"
            )
        head = str(len(model) - 1)
    try:
        module = model.get_submodule(head)
    except AttributeError as e:
        raise ValueError(f"the model has no submodule named {head!r} to use as the head") from e
    if not isinstance(module, nn.Linear):
        raise TypeError(
            f"the head {head!r} is a {type(module).__name__}, not nn.Linear: GNvpro eliminates an "
            "affine last layer. End the model with nn.Linear, or name one with head='...'"
        )
    split = HeadSplit(model, head, module)
    if not split.feature_params():
        raise ValueError("the model has no trainable parameters outside its head")
    if probe is not None:
        check_head_is_last(split, probe)
    return split


@torch.no_grad()
def check_head_is_last(split: HeadSplit, probe: Tensor) -> None:
    """Verify model(x) == head(features(x)) on a probe batch, else raise ValueError."""
    params = dict(split.model.named_parameters())
    params = {k: v for k, v in params.items() if k in split.feature_params()}
    try:
        out = split.model(probe)
        z = split.features(params, probe)
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"the model fails on x of shape {tuple(probe.shape)} and dtype {probe.dtype} "
            f"({first}): check that x has the shape and dtype the model's input layer expects"
        ) from e
    if not bool(torch.isfinite(out).all()):
        raise ValueError(
            "model(x) is not finite (NaN/Inf) on the first samples of x: check the model's "
            "weights and the scale of x"
        )
    if not torch.allclose(out, split.model(probe), rtol=1e-5, atol=1e-6):
        raise ValueError(
            "model(x) differs between two calls on the same x: GNvpro needs a deterministic "
            "model. Call model.eval() (dropout, batch norm) and remove random layers"
        )
    if z.ndim != 2 or z.shape[1] != split.n_features:
        raise ValueError(
            f"the features feeding the head {split.head_name!r} have shape {tuple(z.shape)}; "
            f"GNvpro needs (n, {split.n_features}): flatten them before the head"
        )
    again = split.head(z)
    if out.shape != again.shape or not torch.allclose(out, again, rtol=1e-5, atol=1e-6):
        raise ValueError(
            f"model(x) differs from head(features(x)) for head {split.head_name!r}: the affine "
            "head is not the model's last operation (an activation, softmax or reshape follows "
            "it). Move that operation into the loss or name the right head"
        )
