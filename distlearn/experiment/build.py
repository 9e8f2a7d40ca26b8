"""Building an experiment from a validated config: the data, its loaders, the model, the learner, the metric."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from ..options import is_int
from ..specs import ConfigError, read_spec
from ..training.settings import group_model_options
from .defaults import AUTO, AUTO_SIZED, SECTIONS, plain, with_run_defaults
from .parameters import auto_sized, parameters_of, resolve_class
from .validate import section_entries, validate_config
from .weights import INIT_FROM, init_from

__all__ = ["Experiment", "build_experiment"]

logger = logging.getLogger(__name__)


@dataclass
class Experiment:
    """Everything a run needs, built from a validated config.

    Attributes:
        data: The data object (``n_features``, ``n_classes``, ...).
        data_loaders: ``{"train_loader": DataLoader, "test_loader": DataLoader}``.
        model: The model (an ``nn.Module``).
        learner: The learner (``distlearn.learner.BackwardLearner`` in shipped configs).
        metric: The metric, or ``None`` when ``metric_configs`` is null.
        run: The ``run`` section as a plain dict (seed, output_dir, tracking, ...).
        config: The whole resolved config as a plain dict (to save or log).
    """

    data: Any
    data_loaders: dict[str, Any]
    model: Any  # a torch.nn.Module
    learner: Any
    metric: Any
    run: dict[str, Any]
    config: dict[str, Any] = field(repr=False)


def build_experiment(
    cfg: DictConfig | Mapping[str, Any], *, validated: bool = False, **learner_kwargs: Any
) -> Experiment:
    """Validate ``cfg``, then build the data loaders, model, learner and metric.

    Sizes left to the data come from the data object (``AUTO_SIZED``); the learner gets
    ``seed=run.seed`` unless its parameters set one; torch's RNG is seeded with ``run.seed``
    just before the model is built, so initial weights match across processes and runs.

    Args:
        cfg: A config from ``load_config`` (or a plain dict of the same shape).
        validated: The caller has run ``validate_config`` on ``cfg`` already: skip it.
        **learner_kwargs: Learner arguments only code can give (e.g. ``accelerator=...``).

    Returns:
        The ``Experiment``; ``cfg`` is not modified.

    Raises:
        ConfigError: If the config is invalid, or a size set to ``auto`` has no value in
            the data (``num_classes`` of a regression data set).
    """
    if not validated:
        validate_config(cfg, check_output_dir=False)  # nothing is written here
    c = with_run_defaults(plain(cfg))
    run = c["run"]

    def build(key: str, section: Any = None, label: str | None = None, **extra: Any) -> Any:
        spec = read_spec(c[key] if section is None else section, SECTIONS[key])
        label = label or key
        cls = resolve_class(spec.path, f"{label}.{spec.class_key}")
        at = f"{label}.{spec.params_key}"
        params = dict(spec.parameters)
        auto = auto_sized(cls, params, key) if key in AUTO_SIZED else {}
        for name, (attr, needed) in auto.items():  # sizes left to the data
            if (size := getattr(data, attr, None)) is not None:
                params[name] = size
            elif needed:
                raise ConfigError([
                    f"{at}.{name}: {params.get(name, AUTO)!r} takes the size from the data's {attr!r}, "
                    f"but {type(data).__name__} gives None; set {name} to an int or remove it"
                ])
        if key == "learner_configs" and params.get("seed") is None and "seed" in parameters_of(cls):
            params["seed"] = run["seed"]
        if key == "learner_configs" and "model_options" in parameters_of(cls):
            params = group_model_options(params)  # compile, gradient_checkpointing: one keyword
        if key == "model_configs":
            _check_outputs(params.get("out_features"), data, f"{at}.out_features")
        return cls(**{**params, **extra})

    import torch

    data = build("data_configs")
    data_loaders = data.load()
    torch.manual_seed(run["seed"])
    model = build("model_configs")
    if c["model_configs"].get(INIT_FROM) is not None:  # weights only: the optimizer and progress start fresh
        logger.info("model weights from %s", init_from(model, c["model_configs"][INIT_FROM]))
    learner = build("learner_configs", **learner_kwargs)
    metric = None
    if c.get("metric_configs"):
        entries = section_entries(c, "metric_configs", [])
        metrics = [build("metric_configs", section, label) for label, section in entries]
        metric = metrics[0] if not isinstance(c["metric_configs"], list) else _collection(metrics)
    logger.debug("built experiment: data=%r model=%s metric=%r", data, type(model).__name__, metric)
    return Experiment(
        data=data, data_loaders=data_loaders, model=model, learner=learner, metric=metric, run=run, config=c
    )


def _collection(metrics: list[Any]) -> Any:
    """Several metrics from a YAML list: one collection, reduced in one collective; the first is the primary."""
    from ..metrics import Metrics

    try:
        return Metrics(metrics)
    except ValueError as exc:  # two metrics of one name
        raise ConfigError([f"metric_configs: {exc}"]) from None


def _check_outputs(out_features: Any, data: Any, key: str) -> None:
    """A model with fewer outputs than the data has classes (or several outputs for one regression
    target) fails mid-training or trains on broadcast shapes: refuse it at build time."""
    if not is_int(out_features):
        return
    task, n_classes, n_outputs = (getattr(data, a, None) for a in ("task", "n_classes", "n_outputs"))
    if task == "classification" and is_int(n_classes) and out_features < n_classes:
        classes = getattr(data, "classes", None)
        found = list(classes) if classes is not None else list(range(n_classes))
        shown = ", ".join(str(getattr(c, "item", lambda c=c: c)()) for c in found[:12]) + (", ..." if len(found) > 12 else "")
        raise ConfigError([
            f"{key}: {out_features}, but the data has {n_classes} classes ({shown}): labels "
            f"{out_features}..{n_classes - 1} would be outside the model's outputs; set out_features: auto "
            f"(or {n_classes})"
        ])
    if task == "regression" and is_int(n_outputs) and out_features != n_outputs:
        raise ConfigError([
            f"{key}: {out_features}, but the data has {n_outputs} regression target{'s' if n_outputs != 1 else ''}; "
            f"set out_features: auto (or {n_outputs})"
        ])

