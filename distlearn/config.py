"""Kept for imports written before the redesign: configs live in ``distlearn.experiment.config``."""

from .experiment.config import (
    ConfigError,
    Experiment,
    build_experiment,
    config_dir,
    load_config,
    resolve_class,
    shipped_configs,
    validate_config,
)

__all__ = [
    "ConfigError", "Experiment", "build_experiment", "config_dir", "load_config", "resolve_class",
    "shipped_configs", "validate_config",
]
