"""gnvpro: Gauss-Newton variable projection (GNvpro) for PyTorch.

Train any network whose last layer is affine by eliminating that layer: W*(θ) is solved exactly
at every θ and a trust-region Gauss-Newton method runs on the remaining weights θ
(Newman, Ruthotto, Hart, van Bloemen Waanders, SIAM J. Math. Data Sci. 2021).
"""

from . import checks
from .head import HeadSplit, split_model
from .losses import CrossEntropyLoss, LeastSquaresLoss, LogisticLoss, Loss, make_loss
from .optim import GNvpro, GNvproConfig, History
from .solver import SolverConfig, StepInfo, Termination
from .trust_region import RadiusRule
from .varpro import ReducedObjective

__version__ = "0.1.0"

__all__ = [
    "CrossEntropyLoss",
    "GNvpro",
    "GNvproConfig",
    "HeadSplit",
    "History",
    "LeastSquaresLoss",
    "LogisticLoss",
    "Loss",
    "RadiusRule",
    "ReducedObjective",
    "SolverConfig",
    "StepInfo",
    "Termination",
    "checks",
    "make_loss",
    "split_model",
]
