"""gnvpro: Gauss-Newton variable projection (GNvpro) for PyTorch.

Train any network whose last layer is affine by eliminating that layer: W*(θ) is solved exactly
at every θ and a Gauss-Newton method runs on the remaining weights θ
(Newman, Ruthotto, Hart, van Bloemen Waanders, SIAM J. Math. Data Sci. 2021).

    opt = gnvpro.GNvpro(model, loss="least_squares")      # or gnvpro.LBFGSVarPro(...)
    hist = gnvpro.fit(opt, [(x, y)], max_work=200, val=(x_val, y_val))
"""

from . import checks
from .batches import fixed_batches
from .checkpoint import load_checkpoint, save_checkpoint
from .descent import Hybrid, LanczosSubspace, LBFGSTwoLoop, PreconditionedCG, Steihaug
from .head import HeadSplit, split_model
from .loop import History, KeepBest, fit
from .losses import CrossEntropyLoss, LeastSquaresLoss, LogisticLoss, Loss, make_loss
from .methods import (
    FirstOrder,
    FirstOrderConfig,
    GNvpro,
    GNvproConfig,
    JointGaussNewton,
    JointGNConfig,
    LBFGSVarPro,
    LBFGSVarProConfig,
    Method,
)
from .reduce import DistributedReducer, SampleReducer
from .search import StrongWolfe, TrustRegion
from .solver import SolverConfig, StepInfo, Termination
from .trust_region import RadiusRule
from .varpro import ReducedObjective

__version__ = "0.1.0"

__all__ = [
    "CrossEntropyLoss",
    "DistributedReducer",
    "FirstOrder",
    "FirstOrderConfig",
    "GNvpro",
    "GNvproConfig",
    "HeadSplit",
    "History",
    "Hybrid",
    "JointGNConfig",
    "JointGaussNewton",
    "KeepBest",
    "LBFGSTwoLoop",
    "LBFGSVarPro",
    "LBFGSVarProConfig",
    "LanczosSubspace",
    "LeastSquaresLoss",
    "LogisticLoss",
    "Loss",
    "Method",
    "PreconditionedCG",
    "RadiusRule",
    "ReducedObjective",
    "SampleReducer",
    "SolverConfig",
    "Steihaug",
    "StepInfo",
    "StrongWolfe",
    "Termination",
    "TrustRegion",
    "checks",
    "fit",
    "fixed_batches",
    "load_checkpoint",
    "make_loss",
    "save_checkpoint",
    "split_model",
]
