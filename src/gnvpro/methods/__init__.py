"""Training methods, all with one protocol (methods/base.py) and driven by gnvpro.loop.fit.

Variable projection (W = W*(θ) always; the user picks the outer solver):
    GNvpro         Gauss-Newton: truncated GN with a line search, or the paper's trust region
    LBFGSVarPro    L-BFGS with a strong Wolfe line search
Baselines on (θ, W) jointly, W starting at W*(θ0):
    JointGaussNewton   trust-region Gauss-Newton (coupled or block-diagonal GN matrix)
    FirstOrder         ADAM or SGD epochs over shuffled mini-batches

Adding a method: one module with a class following the protocol, one line here.
"""

from .base import Iterate, Method
from .first_order import FirstOrder, FirstOrderConfig
from .gnvpro import GNvpro, GNvproConfig
from .joint_gn import JointGaussNewton, JointGNConfig
from .lbfgs_vpro import LBFGSVarPro, LBFGSVarProConfig
from .varpro_optimizer import VarProOptimizer

__all__ = [
    "FirstOrder",
    "FirstOrderConfig",
    "GNvpro",
    "GNvproConfig",
    "Iterate",
    "JointGNConfig",
    "JointGaussNewton",
    "LBFGSVarPro",
    "LBFGSVarProConfig",
    "Method",
    "VarProOptimizer",
]
