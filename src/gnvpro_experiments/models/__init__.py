"""Paper networks: antisymmetric RK4 ResNet with multilevel prolongation, CNN, MLP."""

from gnvpro_experiments.models.cnn import PaperCNN, paper_cnn
from gnvpro_experiments.models.mlp import mlp
from gnvpro_experiments.models.resnet import (
    AntisymmetricResNet,
    interpolation_weights,
    paper_network,
    refine_network,
    time_smoothness,
)

__all__ = [
    "AntisymmetricResNet",
    "PaperCNN",
    "interpolation_weights",
    "mlp",
    "paper_cnn",
    "paper_network",
    "refine_network",
    "time_smoothness",
]
