"""The paper's experiments (docs/experiments.md): configs, the runner and the report.

    from gnvpro_experiments import load_config, run_experiment, report
    cfg = load_config("cdr")
    run_experiment(cfg, "runs/cdr", methods=["gnvpro", "adam"], seeds=["ref", 0])
    print(report("runs/cdr"))

The same from the shell: ``gnvpro run cdr --seeds ref,0 --methods gnvpro,adam --out runs/cdr``
and ``gnvpro report runs/cdr``.
"""

from .config import (
    KNOWN_METHODS,
    ExperimentConfig,
    ExperimentError,
    available_experiments,
    load_config,
)
from .report import report, summary_table
from .runner import run_experiment
from .selection import parse_methods, parse_seeds

__all__ = [
    "KNOWN_METHODS",
    "ExperimentConfig",
    "ExperimentError",
    "available_experiments",
    "load_config",
    "parse_methods",
    "parse_seeds",
    "report",
    "run_experiment",
    "summary_table",
]
