"""The least-squares reduced problem as one stacked residual (a test reference only)."""

import torch
from torch import Tensor

from gnvpro.varpro import Point, ReducedObjective


class StackedResidual:
    """Least squares as r(θ) = [vec(S − C)/√n; √α_θ Bθ; √α_W vec(W*)], Φ_red = ½‖r‖².

    J_r v = [J_S v/√n; √α_θ B v; √α_W J_W v] and J_rᵀ u = J_Sᵀ u₁/√n + √α_θ Bᵀu₂ + √α_W J_Wᵀ u₃,
    so H_GN = J_rᵀ J_r (Golub-Pereyra; the reference implementation's operator).
    """

    def __init__(self, obj: ReducedObjective, pt: Point) -> None:
        if not obj.loss.is_quadratic:
            raise ValueError("the stacked residual exists only for loss='least_squares'")
        self.obj, self.pt, self.jac = obj, pt, obj.jacobian(pt)
        self._sn = obj.n**0.5
        self._sa, self._sw = obj.reg.alpha**0.5, obj.alpha_w**0.5

    def value(self) -> Tensor:
        pt, obj = self.pt, self.obj
        return torch.cat([((pt.S - obj.C) / self._sn).reshape(-1),
                          self._sa * obj.reg.apply_B(pt.theta), self._sw * pt.W.reshape(-1)])

    def forward(self, v: Tensor) -> Tensor:
        dS, dW = self.jac.forward(v)
        return torch.cat([(dS / self._sn).reshape(-1), self._sa * self.obj.reg.apply_B(v),
                          self._sw * dW.reshape(-1)])

    def adjoint(self, u: Tensor) -> Tensor:
        n1, n3 = self.pt.S.numel(), self.pt.W.numel()
        u1, u2, u3 = u[:n1], u[n1 : u.numel() - n3], u[u.numel() - n3 :]
        X = u1.reshape(self.pt.S.shape) / self._sn
        R = self._sw * u3.reshape(self.pt.W.shape)
        out = self.jac.adjoint(X, R)
        if self._sa > 0:
            _, pullback = torch.func.vjp(self.obj.reg.apply_B, self.pt.theta)
            out = out + self._sa * pullback(u2)[0]
        return out
