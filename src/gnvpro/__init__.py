"""gnvpro: Gauss-Newton variable projection (GNvpro) for PyTorch."""

__version__ = "0.1.0"
