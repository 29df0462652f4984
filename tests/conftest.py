import pytest
import torch

from gnvpro_experiments.models import mlp


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The test models are tiny: one thread avoids oversubscribing the 2 CI cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_regression():
    """A tiny tanh MLP 3→5→4 with an affine head 4→2 and smooth targets (float64)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, generator=g, dtype=torch.float64)
    y = torch.stack([torch.sin(x[:, 0]) + x[:, 1] ** 2, torch.cos(x[:, 2]) * x[:, 0]], 1)
    model = mlp(3, [5, 4], 2, activation="tanh", dtype=torch.float64, generator=g)
    return model, x, y
