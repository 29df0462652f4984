"""The experiments' data sets: each a :class:`~.base.Problem`, registered by name in
:mod:`.registry` (the TOML's ``problem = NAME``). The built-in ones register here."""

from .cdr import CDR
from .dcr.problem import DCR
from .ellipse import Ellipse
from .images import ImageClassification
from .indian_pines import IndianPines
from .registry import register

for _problem in (
    CDR(),
    DCR(),
    Ellipse(),
    IndianPines(),
    ImageClassification("cifar10"),
    ImageClassification("fashion-mnist"),
):
    register(_problem)
