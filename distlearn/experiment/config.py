"""Experiment configs: load with OmegaConf, validate everything up front, build the objects.

The public face of ``distlearn.experiment``; the parts live beside it:
``defaults`` (the sections, the run defaults, the sizes left to the data), ``load``
(finding the file, YAML, overrides), ``validate`` (every problem found, by key path; with
``checks``, ``parameters`` and ``run_section``), ``build`` (the objects of a run) and
``tinybig`` (reading tinybig's experiment files). ``configs/digits.yaml`` is a complete example.
"""

from ..specs import ConfigError
from .build import Experiment, build_experiment
from .defaults import DEFAULT_CONFIG_NAME
from .load import config_dir, load_config, shipped_configs
from .parameters import resolve_class
from .validate import validate_config

__all__ = [
    "DEFAULT_CONFIG_NAME", "ConfigError", "Experiment", "build_experiment", "config_dir", "load_config",
    "resolve_class", "shipped_configs", "validate_config",
]
