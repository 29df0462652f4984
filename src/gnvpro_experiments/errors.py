"""The application's user-facing error (the bottom of gnvpro_experiments: imports nothing)."""

__all__ = ["ExperimentError"]


class ExperimentError(ValueError):
    """A user-facing configuration or input error (the CLI prints it and exits with code 2)."""
