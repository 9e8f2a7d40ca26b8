"""The reference's ``{X_class, X_parameters}`` configs of a loss, optimizer and scheduler, and the learner's option checks.

The spec format and class lookup belong to :mod:`distlearn.specs` and the option ranges to
:mod:`distlearn.training.settings` (the config validator reads both too); this module adds what
needs torch: the classes' bases and signatures, and the checks against a given Accelerator.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from accelerate import Accelerator
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from ..options import is_int
from ..specs import read_spec, resolve_class, spec_keys
from .settings import check_learner_options as check_option_ranges

__all__ = ["check_int", "check_learner_options", "check_scheduler", "config_spec"]


def check_int(key: str, value: Any, minimum: int) -> None:
    """Raise ValueError unless ``value`` is an int >= ``minimum`` (``key`` names it)."""
    if not is_int(value) or value < minimum:
        raise ValueError(f"{key} must be an int >= {minimum}, got {value!r}")


def check_learner_options(*, n_epochs: int, display_every_n_steps: int, seed: int,
                          gradient_accumulation_steps: int | None, max_grad_norm: float | None,
                          mixed_precision: str | None, scheduler_interval: str, accelerator: Accelerator | None,
                          accelerator_kwargs: Mapping[str, Any] | None) -> None:
    """The checks of ``BackwardLearner``'s options that need no built object.

    Raises:
        ValueError: an option out of range, or one that conflicts with the given accelerator.
    """
    check_option_ranges(
        n_epochs=n_epochs, display_every_n_steps=display_every_n_steps, seed=seed,
        gradient_accumulation_steps=gradient_accumulation_steps, max_grad_norm=max_grad_norm,
        mixed_precision=mixed_precision, scheduler_interval=scheduler_interval,
    )
    if accelerator is not None:
        if accelerator_kwargs:
            raise ValueError("pass either accelerator or accelerator_kwargs, not both")
        _check_matches(accelerator, "mixed_precision", mixed_precision)
        _check_matches(accelerator, "gradient_accumulation_steps", gradient_accumulation_steps)


def check_scheduler(lr_scheduler: Any, optimizer: Any, spec: tuple[type, dict[str, Any]] | None,
                    scheduler_interval: str) -> None:
    """Raise ValueError for a scheduler object not built on ``optimizer``, or a plateau scheduler stepped per step."""
    if lr_scheduler is not None and getattr(lr_scheduler, "optimizer", None) is not optimizer:
        raise ValueError(
            "an lr_scheduler object must be built on the optimizer object passed as optimizer=...; "
            "otherwise give lr_scheduler_configs and the learner builds it on its optimizer"
        )
    scheduler_class = type(lr_scheduler) if lr_scheduler is not None else (spec or (object,))[0]
    if scheduler_interval == "step" and issubclass(scheduler_class, ReduceLROnPlateau):
        raise ValueError("ReduceLROnPlateau steps on a validation loss: use scheduler_interval='epoch'")


def _check_matches(accelerator: Accelerator, key: str, value: Any) -> None:
    have = getattr(accelerator, key)
    if value is not None and value != have:
        raise ValueError(f"{key}={value!r} conflicts with the given accelerator's {key}={have!r}; set it on one only")


_KINDS: dict[str, tuple[tuple[type, ...], str]] = {  # kind -> (accepted bases, an example class path)
    "loss": ((object,), "torch.nn.CrossEntropyLoss"),
    "optimizer": ((torch.optim.Optimizer,), "torch.optim.AdamW"),
    "lr_scheduler": ((LRScheduler, ReduceLROnPlateau), "torch.optim.lr_scheduler.StepLR"),
}


def config_spec(kind: str, configs: Mapping[str, Any] | None) -> tuple[type, dict[str, Any]] | None:
    """``({kind}_class, a copy of {kind}_parameters)``, checked against the class's signature.

    Raises:
        ValueError, TypeError: a malformed config, an unknown class (ConfigError, with the
            nearest name) or parameters that do not fit, naming the key.
    """
    if configs is None:
        return None
    from omegaconf import OmegaConf

    key = f"{kind}_configs"
    bases, example = _KINDS[kind]
    if OmegaConf.is_config(configs):  # the config layer may hand OmegaConf nodes over as they are
        configs = OmegaConf.to_container(configs, resolve=True)
    if not isinstance(configs, Mapping):
        class_key, params_key = spec_keys(kind)
        raise TypeError(f"{key} must be a dict like {{'{class_key}': ..., '{params_key}': {{...}}}}, got {configs!r}")
    spec = read_spec(configs, kind)
    class_key, params_key = spec.class_key, spec.params_key
    if spec.unknown:
        raise ValueError(f"{key}: unknown keys {sorted(spec.unknown)}; expected '{class_key}' and optionally '{params_key}'")
    if not spec.has_class:
        raise ValueError(f"{key}.{class_key} is missing: give a class path such as {example!r}")
    path = spec.path
    cls = path if isinstance(path, type) else resolve_class(path, f"{key}.{class_key}")
    if not issubclass(cls, bases):
        expected = " or ".join(b.__module__ + "." + b.__qualname__ for b in bases)
        raise TypeError(f"{key}.{class_key}={path!r} is not a {expected} class")
    params = copy.deepcopy(dict(spec.parameters or {}))
    leading = 0 if kind == "loss" else 1  # the optimizer is built on the parameters, the scheduler on the optimizer
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # some builtins have no signature: let the constructor judge
        return cls, params
    try:
        signature.bind(*([None] * leading), **params)
    except TypeError as error:
        accepted = [p for p in list(signature.parameters)[leading:] if p not in ("args", "kwargs")]
        raise ValueError(f"{key}.{params_key} does not fit {cls.__name__}: {error}; it accepts {accepted}") from None
    return cls, params
