"""A data set split into train / validation / test, as torch tensors, and the :class:`Problem`
an experiment's ``problem = NAME`` selects (registered in :mod:`.registry`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from torch import nn

    from ..config import ExperimentConfig


@dataclass
class Split:
    """Inputs x_* are (n, ...) float tensors; targets y_* are (n, c) float (regression)
    or (n,) int64 class indices (classification)."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    meta: dict = field(default_factory=dict)

    def sizes(self) -> tuple[int, int, int]:
        return len(self.x_train), len(self.x_val), len(self.x_test)


class Problem(ABC):
    """The data of an experiment: what ``problem = NAME`` in its TOML selects.

    A problem reads its raw data set once per run (:meth:`load`) and draws the train / val /
    test split of every seed from it (:meth:`split`), the same split for every method of that
    seed.  Both get the experiment's config; its ``[data]`` table holds only :attr:`data_keys`
    (keys ``n*`` are checked to be positive integers when the TOML is loaded).

    Errors: a missing file raises FileNotFoundError naming it (and how to get it, see
    :mod:`.paths`); an unreadable one ValueError, OSError and the like (the runner turns them into
    one-line messages); a misuse ExperimentError.

    Optional: the reference seed "ref" (:attr:`has_reference`; a fixed split and θ0 from a
    reference implementation, and its training history) and the problem's own report figures
    (:meth:`figures`).
    """

    #: the name in the TOML's ``problem = ...``
    name: str
    #: the ``[data]`` keys the problem reads
    data_keys: frozenset[str]
    #: whether seed "ref" (the reference split and θ0) exists
    has_reference: bool = False

    @abstractmethod
    def load(self, cfg: ExperimentConfig, data_path: str | None, progress: bool) -> Any:
        """The raw data set, loaded once per run: from ``data_path`` (``--data``), else from
        the default location; ``progress``: bars while generating data."""

    @abstractmethod
    def split(self, cfg: ExperimentConfig, raw: Any, seed: int) -> Split:
        """The train / val / test split of ``seed`` drawn from ``raw`` (:meth:`load`)."""

    def reference_split(self, cfg: ExperimentConfig, raw: Any) -> Split:
        """The split of seed "ref" (only if :attr:`has_reference`)."""
        raise self._no_reference()

    def reference_model(self, cfg: ExperimentConfig) -> nn.Sequential:
        """θ0 of seed "ref": the reference network (only if :attr:`has_reference`)."""
        raise self._no_reference()

    def reference_history(self, levels: int) -> dict:
        """The reference implementation's training history over ``levels`` levels, as written
        to ``reference_history.json`` (only if :attr:`has_reference`)."""
        raise self._no_reference()

    def figures(self, root: Path, summary: dict) -> tuple[list[Path], str]:
        """The problem's own report figures of the run directory ``root`` (its summary.json is
        ``summary``): (the PNG files written into ``root``, a markdown note or "").  Default:
        none."""
        return [], ""

    def _no_reference(self) -> Exception:
        from ..errors import ExperimentError

        return ExperimentError(f"problem {self.name!r} has no reference seed 'ref'")
