"""Experiment configs: load with OmegaConf, validate everything up front, build the objects.

An experiment config follows the reference's format: four sections, each naming a
class by its dotted path and the keyword arguments to build it with, plus a ``run``
section for the run itself::

    data_configs:    {data_class: distlearn.data.SklearnDataset, data_parameters: {name: digits}}
    model_configs:   {model_class: distlearn.models.MLP,
                      model_parameters: {in_features: auto, out_features: auto, hidden_sizes: [256]}}
    learner_configs: {learner_class: distlearn.learner.BackwardLearner,
                      learner_parameters: {name: digits, n_epochs: 40,
                        optimizer_configs: {optimizer_class: torch.optim.AdamW,
                                            optimizer_parameters: {lr: 1.0e-3}},
                        loss_configs: {loss_class: torch.nn.CrossEntropyLoss},
                        lr_scheduler_configs: null}}
    metric_configs:  {metric_class: distlearn.metrics.Accuracy, metric_parameters: {}}
    run: {seed: 0, output_dir: null, overwrite: false,
          tracking: {backend: wandb, project: distlearn, entity: null, name: null, mode: null},
          checkpoint: {}, resume: null}

Sizes come from the data object (``AUTO_SIZED``): the model's ``in_features``/
``out_features`` left out, ``auto`` or null take its ``n_features``/``n_outputs``; a
metric's ``num_classes`` left out or ``auto`` takes its ``n_classes`` (a fixed-size
confusion matrix: no host sync to grow it during training; null keeps the metric's own
default). ``run`` keys left out take ``RUN_DEFAULTS``.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import inspect
import logging
import pkgutil
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

logger = logging.getLogger(__name__)

# Section key -> prefix of its "<prefix>_class" / "<prefix>_parameters" keys.
SECTIONS: dict[str, str] = {
    "data_configs": "data",
    "model_configs": "model",
    "learner_configs": "learner",
    "metric_configs": "metric",
}
OPTIONAL_SECTIONS = frozenset({"metric_configs"})  # null or absent: no metric

# The learner's nested configs: key -> (prefix, constructor arguments distlearn supplies).
LEARNER_NESTED: dict[str, tuple[str, frozenset[str]]] = {
    "optimizer_configs": ("optimizer", frozenset({"params"})),
    "loss_configs": ("loss", frozenset()),
    "lr_scheduler_configs": ("lr_scheduler", frozenset({"optimizer"})),
}
# Learner constructor arguments that only code can supply (objects, not YAML values).
LEARNER_SUPPLIED = frozenset({"accelerator", "optimizer", "loss", "lr_scheduler"})

# Section -> (parameter -> the data object's attribute filling it). A parameter the class accepts
# is filled when the config leaves it out or writes `auto`; for the model also when it writes null.
AUTO_SIZED: dict[str, dict[str, str]] = {
    "model_configs": {"in_features": "n_features", "out_features": "n_outputs"},
    "metric_configs": {"num_classes": "n_classes"},
}
AUTO = "auto"

RUN_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "output_dir": None,  # None: runs/<config name>-<timestamp>, see report.default_output_dir()
    "overwrite": False,
    "tracking": {
        "backend": "wandb",
        "project": "distlearn",
        "entity": None,
        "name": None,
        "mode": None,  # None: online with W&B credentials, offline without
    },
    "checkpoint": {},  # reserved for the checkpoint settings (not validated yet)
    "resume": None,  # reserved: None, true/false, or a checkpoint path
}
TRACKING_BACKENDS = ("wandb", "none")
TRACKING_MODES = ("online", "offline", "disabled")
MIXED_PRECISION = ("no", "fp16", "bf16")
SCHEDULER_INTERVALS = ("epoch", "step")

DEFAULT_CONFIG_NAME = "digits"


class ConfigError(ValueError):
    """An invalid experiment config; ``problems`` lists every problem found, one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in the config:"
        super().__init__("\n  - ".join([head, *self.problems]))


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
    model: torch.nn.Module
    learner: Any
    metric: Any
    run: dict[str, Any]
    config: dict[str, Any] = field(repr=False)


# --------------------------------------------------------------------------- loading


def config_dir() -> Path:
    """The directory of the shipped experiment configs.

    Looked up next to the package first (``distlearn/configs``, for a wheel that ships
    them as package data), then at the repository root (``configs/``, a source
    checkout or ``pip install -e .``), so the default works from any directory.

    Raises:
        FileNotFoundError: If neither exists.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / f"{DEFAULT_CONFIG_NAME}.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"no shipped configs found in {here / 'configs'} or {here.parent / 'configs'}; "
        "pass a config file path"
    )


def shipped_configs() -> list[Path]:
    """All shipped experiment configs (``configs/*.yaml``), sorted by name."""
    return sorted(config_dir().glob("*.yaml"))


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Load an experiment config, merged onto the run defaults, with command-line overrides.

    Args:
        path: A YAML file; or the name of a shipped config (``"wine"`` for
            ``configs/wine.yaml``) when no such file exists; ``None`` for the default
            (digits) config.
        overrides: ``key.path=value`` strings applied last (OmegaConf dotlist syntax, e.g.
            ``run.seed=3``, ``model_configs.model_parameters.hidden_sizes=[128,64]``).

    Returns:
        The merged config (not yet validated: call ``validate_config``).

    Raises:
        ConfigError: If the file is missing or not a YAML mapping, or an override is
            malformed.
    """
    source = _find_config(path)
    if isinstance(overrides, str):
        overrides = [overrides]
    problems = []
    try:
        file_cfg = OmegaConf.load(source)
    except Exception as exc:  # yaml errors carry the line and column
        raise ConfigError([f"{source}: not valid YAML: {exc}"]) from None
    if not isinstance(file_cfg, DictConfig):
        raise ConfigError([f"{source}: expected a mapping at the top level, got a {type(file_cfg).__name__}"])
    dotlist = []
    for item in overrides:
        if not isinstance(item, str) or "=" not in item or item.startswith("="):
            problems.append(f"override {item!r}: expected key.path=value, e.g. run.seed=3")
        else:
            dotlist.append(item)
    try:
        cli_cfg = OmegaConf.from_dotlist(dotlist)
    except Exception as exc:
        problems.append(f"overrides {dotlist}: {type(exc).__name__}: {exc}")
        cli_cfg = OmegaConf.create()
    if problems:
        raise ConfigError(problems)
    try:
        return OmegaConf.merge(OmegaConf.create({"run": RUN_DEFAULTS}), file_cfg, cli_cfg)
    except Exception as exc:  # e.g. run=5 replacing a mapping by a scalar
        raise ConfigError([f"merging {source} with overrides {list(overrides)}: {exc}"]) from None


def _find_config(path: str | Path | None) -> Path:
    if path is None:
        return config_dir() / f"{DEFAULT_CONFIG_NAME}.yaml"
    p = Path(path)
    if p.is_file():
        return p
    try:
        shipped = {c.stem: c for c in shipped_configs()}
    except FileNotFoundError:
        shipped = {}
    if p.suffix == "" and str(path) in shipped:
        return shipped[str(path)]
    hint = f" — did you mean {str(shipped[m[0]])!r}?" if (m := _near(p.stem, shipped)) else ""
    raise ConfigError([f"config file {str(path)!r}: not found (shipped configs: {sorted(shipped)}){hint}"])


# --------------------------------------------------------------------------- classes


def resolve_class(path: str, key: str) -> type:
    """Import the class a dotted path names.

    Args:
        path: ``"package.module.Class"``.
        key: The config key holding the path, for the error message.

    Returns:
        The class.

    Raises:
        ConfigError: If the path does not name a class; the message suggests the nearest
            existing name (``did you mean 'distlearn.models.MLP'?``).
    """
    cls, problem = _resolve(path)
    if problem:
        raise ConfigError([f"{key}: {problem}"])
    return cls


def instantiate(section_cfg: Mapping[str, Any] | DictConfig, prefix: str, **extra: Any) -> Any:
    """Build ``<prefix>_class(**<prefix>_parameters, **extra)`` from one config section.

    Args:
        section_cfg: A mapping with ``<prefix>_class`` and optionally
            ``<prefix>_parameters`` (e.g. ``model_class``/``model_parameters``).
        prefix: ``"data"``, ``"model"``, ``"optimizer"``, ...
        **extra: Arguments added to (and overriding) the configured parameters, for the
            values only code has (``params=model.parameters()``, auto-sized widths).

    Returns:
        The new object. The section itself is not modified.

    Raises:
        ConfigError: If the class cannot be resolved.
    """
    section = _plain(section_cfg)
    cls = resolve_class(section.get(f"{prefix}_class"), f"{prefix}_class")
    params = dict(section.get(f"{prefix}_parameters") or {})
    params.update(extra)
    return cls(**params)


def _resolve(path: Any) -> tuple[type | None, str | None]:
    if not isinstance(path, str) or "." not in path.strip(".") or " " in path:
        return None, f"expected a dotted class path like 'distlearn.models.MLP', got {path!r}"
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            suggestion = _suggest_module(path, missing)
            hint = f" — did you mean {suggestion!r}?" if suggestion else ""
            return None, f"no class {path!r}: module {missing!r} not found{hint}"
        return None, f"importing {module_name!r} for {path!r} failed: {type(exc).__name__}: {exc}"
    except Exception as exc:
        return None, f"importing {module_name!r} for {path!r} failed: {type(exc).__name__}: {exc}"
    obj = getattr(module, attr, None)
    if obj is None:
        candidates = [n for n in dir(module) if not n.startswith("_") and inspect.isclass(getattr(module, n, None))]
        close = _near(attr, candidates)
        hint = f" — did you mean {module_name + '.' + close[0]!r}?" if close else ""
        return None, f"no class {path!r}{hint}"
    if inspect.ismodule(obj):
        return None, f"{path!r} is a module; expected a class inside it ({path}.<Class>)"
    if not inspect.isclass(obj):
        return None, f"{path!r} is a {type(obj).__name__}, expected a class"
    return obj, None


def _suggest_module(path: str, missing: str) -> str | None:
    """For a path through a missing module, the same path with that module's nearest sibling."""
    parent_name, _, leaf = missing.rpartition(".")
    if parent_name:
        try:
            parent = importlib.import_module(parent_name)
        except Exception:
            return None
        names = [m.name for m in pkgutil.iter_modules(getattr(parent, "__path__", []))]
        names += [n for n in dir(parent) if not n.startswith("_")]
    else:
        names = [m.name for m in pkgutil.iter_modules()]
    close = _near(leaf, sorted(set(names)))
    if not close:
        return None
    fixed = ".".join(p for p in (parent_name, close[0]) if p)
    return fixed + path[len(missing):]


def _near(word: str, candidates: typing.Iterable[str], n: int = 1) -> list[str]:
    """Close matches ignoring case (``Adamw`` finds ``AdamW``)."""
    by_lower: dict[str, str] = {}
    for c in candidates:
        by_lower.setdefault(c.lower(), c)
    return [by_lower[m] for m in difflib.get_close_matches(word.lower(), by_lower, n=n, cutoff=0.6)]


# --------------------------------------------------------------------------- validation


def validate_config(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Check a whole experiment config before any process group or data exists.

    Every ``*_class`` must resolve to a class; every parameter set must bind to that
    class's signature (no unknown names, no missing required ones, simple annotated
    types respected, plus the class's own ``check_parameters`` hook if it has one); the
    learner's nested optimizer/loss/lr_scheduler configs likewise (minus the ``params``
    and ``optimizer`` arguments distlearn supplies); learner options and ``run.*`` are
    type- and range-checked. Nothing is built and ``cfg`` is not modified.

    Args:
        cfg: A config from ``load_config`` or a plain dict of the same shape.

    Raises:
        ConfigError: Listing every problem found, each naming the key path, what was
            expected, what was found and, where one exists, the likely fix.
    """
    try:
        c = _with_run_defaults(_plain(cfg))
    except Exception as exc:  # a broken ${interpolation}
        raise ConfigError([f"resolving the config: {type(exc).__name__}: {exc}"]) from None
    problems: list[str] = []
    if not isinstance(c, dict):
        raise ConfigError([f"expected a mapping at the top level, got {type(c).__name__}"])

    known = [*SECTIONS, "run"]
    for key in c:
        if key not in known:
            problems.append(_unknown_key(str(key), known, "top-level key"))

    data_cls = None
    for key, prefix in SECTIONS.items():
        section = c.get(key)
        if section is None:
            if key not in OPTIONAL_SECTIONS:
                problems.append(f"{key}: missing; expected {{{prefix}_class: ..., {prefix}_parameters: {{...}}}}")
            continue
        cls, params = _check_section(section, key, prefix, problems)
        if cls is None or params is None:
            continue
        if prefix == "data":
            data_cls = cls
            _check_parameters(cls, params, f"{key}.{prefix}_parameters", problems)
        elif key in AUTO_SIZED:
            _check_auto_sized(cls, params, data_cls, key, f"{key}.{prefix}_parameters", problems)
        elif prefix == "learner":
            _check_learner(cls, params, f"{key}.{prefix}_parameters", problems)
        else:
            _check_parameters(cls, params, f"{key}.{prefix}_parameters", problems)

    _check_run(c.get("run"), problems)
    if problems:
        raise ConfigError(problems)


def _check_section(
    section: Any, key: str, prefix: str, problems: list[str]
) -> tuple[type | None, dict | None]:
    """Check one ``{prefix_class, prefix_parameters}`` mapping; resolve its class."""
    class_key, params_key = f"{prefix}_class", f"{prefix}_parameters"
    if not isinstance(section, dict):
        problems.append(f"{key}: expected a mapping {{{class_key}: ..., {params_key}: {{...}}}}, got {section!r}")
        return None, None
    for k in section:
        if k not in (class_key, params_key):
            problems.append(_unknown_key(str(k), [class_key, params_key], f"key of {key}", f"{key}."))
    params = section.get(params_key)
    if params is None:
        params = {}
    elif not isinstance(params, dict):
        problems.append(f"{key}.{params_key}: expected a mapping of parameter names to values, got {params!r}")
        params = None
    if class_key not in section:
        problems.append(f"{key}.{class_key}: missing; expected a dotted class path")
        return None, params
    cls, problem = _resolve(section[class_key])
    if problem:
        problems.append(f"{key}.{class_key}: {problem}")
    return cls, params


def _check_auto_sized(
    cls: type, params: dict, data_cls: type | None, key: str, at: str, problems: list[str]
) -> None:
    """Bind a model's or metric's parameters, the ones sized from the data counted as supplied."""
    auto = _auto_sized(cls, params, key)
    for name, (attr, needed) in auto.items():
        if needed and data_cls is not None and not hasattr(data_cls, attr):
            problems.append(
                f"{at}.{name}: {params.get(name, AUTO)!r} takes the size from the data's {attr!r}, but "
                f"{_qualname(data_cls)} has none; set {name} to an int"
            )
    given = {k: v for k, v in params.items() if k not in auto}
    _check_parameters(cls, given, at, problems, supplied=set(auto))


def _check_learner(cls: type, params: dict, at: str, problems: list[str]) -> None:
    nested = {k: params[k] for k in LEARNER_NESTED if k in params}
    options = {k: v for k, v in params.items() if k not in nested}
    sig = _signature(cls)
    for k, v in nested.items():
        if sig is not None and k not in sig.parameters and not _has_var_kw(sig):
            continue  # reported as an unknown parameter below
        prefix, supplied = LEARNER_NESTED[k]
        if v is None:
            continue
        n_cls, n_params = _check_section(v, f"{at}.{k}", prefix, problems)
        if n_cls is not None and n_params is not None:
            _check_parameters(n_cls, n_params, f"{at}.{k}.{prefix}_parameters", problems, excluded=supplied)
    # The learner's own options first: their messages are more specific than a type mismatch.
    flagged = _check_learner_options(options, at, problems)
    # Nested configs are checked above; bind them by name only.
    _check_parameters(
        cls, {**options, **{k: None for k in nested}}, at, problems, excluded=LEARNER_SUPPLIED, flagged=flagged
    )


def _check_learner_options(p: dict, at: str, problems: list[str]) -> set[str]:
    """Range checks of BackwardLearner's options; returns the keys found wrong."""
    found: dict[str, str] = {}
    if "n_epochs" in p and not _is_int(p["n_epochs"], minimum=1):
        found["n_epochs"] = f"expected an int >= 1, got {p['n_epochs']!r}"
    steps = p.get("gradient_accumulation_steps")
    if steps is not None and not _is_int(steps, minimum=1):
        found["gradient_accumulation_steps"] = f"expected null or an int >= 1, got {steps!r}"
    if "max_grad_norm" in p and p["max_grad_norm"] is not None and not _is_number(p["max_grad_norm"], positive=True):
        found["max_grad_norm"] = f"expected null or a number > 0, got {p['max_grad_norm']!r}"
    if "mixed_precision" in p and p["mixed_precision"] is not None and p["mixed_precision"] not in MIXED_PRECISION:
        v = p["mixed_precision"]
        hint = ' — quote it: mixed_precision: "no" (a bare no is YAML for false)' if v is False else ""
        found["mixed_precision"] = f"expected one of {list(MIXED_PRECISION)}, got {v!r}{hint}"
    if "scheduler_interval" in p and p["scheduler_interval"] not in SCHEDULER_INTERVALS:
        found["scheduler_interval"] = (
            f"expected one of {list(SCHEDULER_INTERVALS)}, got {p['scheduler_interval']!r}"
        )
    if "seed" in p and p["seed"] is not None and not _is_int(p["seed"], minimum=0):
        found["seed"] = f"expected null or an int >= 0, got {p['seed']!r}"
    problems.extend(f"{at}.{k}: {msg}" for k, msg in found.items())
    return set(found)


def _check_run(run: Any, problems: list[str]) -> None:
    if not isinstance(run, dict):
        problems.append(f"run: expected a mapping (seed, output_dir, overwrite, tracking, ...), got {run!r}")
        return
    for k in run:
        if k not in RUN_DEFAULTS:
            problems.append(_unknown_key(str(k), list(RUN_DEFAULTS), "key of run", "run."))
    if "seed" in run and not _is_int(run["seed"], minimum=0):
        problems.append(f"run.seed: expected an int >= 0, got {run['seed']!r}")
    out = run.get("output_dir")
    if out is not None and (not isinstance(out, str) or not out.strip()):
        problems.append(f"run.output_dir: expected null (a new folder under runs/) or a path string, got {out!r}")
    if "overwrite" in run and not isinstance(run["overwrite"], bool):
        problems.append(f"run.overwrite: expected true or false, got {run['overwrite']!r}")

    tracking = run.get("tracking")
    if not isinstance(tracking, dict):
        problems.append(f"run.tracking: expected a mapping (backend, project, entity, name, mode), got {tracking!r}")
    else:
        allowed = list(RUN_DEFAULTS["tracking"])
        for k in tracking:
            if k not in allowed:
                problems.append(_unknown_key(str(k), allowed, "key of run.tracking", "run.tracking."))
        backend = tracking.get("backend")
        if backend not in TRACKING_BACKENDS:
            hint = " — to turn tracking off write the word none, not null" if backend is None else ""
            close = _near(str(backend), TRACKING_BACKENDS) if isinstance(backend, str) else []
            hint = f" — did you mean {close[0]!r}?" if close else hint
            problems.append(f"run.tracking.backend: expected one of {list(TRACKING_BACKENDS)}, got {backend!r}{hint}")
        for k in ("project", "entity", "name"):
            v = tracking.get(k)
            if v is not None and not (isinstance(v, str) and v.strip()):
                problems.append(f"run.tracking.{k}: expected null or a non-empty string, got {v!r}")
        mode = tracking.get("mode")
        if mode is not None and mode not in TRACKING_MODES:
            problems.append(
                f"run.tracking.mode: expected null (offline without W&B credentials, online with) "
                f"or one of {list(TRACKING_MODES)}, got {mode!r}"
            )

    checkpoint = run.get("checkpoint")
    if checkpoint is not None and not isinstance(checkpoint, dict):
        problems.append(f"run.checkpoint: expected a mapping or null, got {checkpoint!r}")
    resume = run.get("resume")
    if resume is not None and not isinstance(resume, (bool, str)):
        problems.append(f"run.resume: expected null, true/false or a checkpoint path, got {resume!r}")


def _check_parameters(
    cls: type,
    params: dict,
    at: str,
    problems: list[str],
    excluded: typing.AbstractSet[str] = frozenset(),
    supplied: typing.AbstractSet[str] = frozenset(),
    flagged: typing.AbstractSet[str] = frozenset(),
) -> None:
    """Bind ``params`` to ``cls``'s signature and report every mismatch under key ``at``.

    ``excluded``: arguments only distlearn passes (must not be in the config);
    ``supplied``: arguments filled in later (not missing when absent);
    ``flagged``: keys already reported wrong (one problem per key is enough).
    """
    flagged = set(flagged)
    sig = _signature(cls)
    name = _qualname(cls)
    if sig is None:  # e.g. a C extension class without a signature: nothing to check
        return
    accepted = [
        p.name
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in excluded
    ]
    var_kw = _has_var_kw(sig)
    for key in params:
        if key in excluded:
            problems.append(f"{at}.{key}: set by distlearn at build time; remove it from the config")
        elif key not in accepted and not var_kw:
            close = _near(str(key), accepted)
            hint = f" — did you mean {close[0]!r}?" if close else ""
            problems.append(f"{at}.{key}: {name} has no parameter {key!r}{hint} (accepted: {', '.join(accepted)})")
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is not p.empty:
            continue
        if p.name not in params and p.name not in excluded and p.name not in supplied:
            problems.append(f"{at}: missing required parameter {p.name!r} of {name}")
    for key, value in params.items():
        p = sig.parameters.get(key)
        if p is None or key in excluded or key in flagged:
            continue
        if _matches(value, p.annotation) is False:
            flagged.add(key)
            problems.append(
                f"{at}.{key}: expected {_describe(p.annotation)}, got {value!r} ({type(value).__name__})"
            )
    hook = getattr(cls, "check_parameters", None)
    if callable(hook):
        own = {k: v for k, v in params.items() if k not in excluded and k not in flagged}
        try:
            for key, message in hook(own):
                problems.append(f"{at}.{key}: {message}")
        except Exception as exc:  # a hook must not hide the other problems
            problems.append(f"{at}: {name}.check_parameters failed: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- building


def build_experiment(
    cfg: DictConfig | Mapping[str, Any], *, validated: bool = False, **learner_kwargs: Any
) -> Experiment:
    """Validate ``cfg``, then build the data loaders, model, learner and metric.

    Sizes the config leaves to the data come from the data object (``AUTO_SIZED``: the
    model's ``in_features``/``out_features``, a metric's ``num_classes``); the learner gets
    ``seed=run.seed`` unless its parameters set one. torch's global RNG is seeded with
    ``run.seed`` just before the model is built, so its initial weights are the same in
    every process and every run.

    Args:
        cfg: A config from ``load_config`` (or a plain dict of the same shape).
        validated: The caller has run ``validate_config`` on ``cfg`` already: skip it.
        **learner_kwargs: Extra learner constructor arguments only code can give
            (e.g. ``accelerator=...``).

    Returns:
        The ``Experiment``; ``cfg`` is not modified.

    Raises:
        ConfigError: If the config is invalid (see ``validate_config``), or a size set to
            ``auto`` has no value in the data (``num_classes`` of a regression data set).
    """
    if not validated:
        validate_config(cfg)
    c = _with_run_defaults(_plain(cfg))
    run = c["run"]

    def build(key: str, **extra: Any) -> Any:
        """One section's object, its class resolved once: ``cls(**parameters, **sizes, **extra)``."""
        prefix = SECTIONS[key]
        cls = resolve_class(c[key][f"{prefix}_class"], f"{key}.{prefix}_class")
        params = dict(c[key].get(f"{prefix}_parameters") or {})
        if key in AUTO_SIZED:
            params.update(_data_sizes(cls, params, key, data))
        if key == "learner_configs" and params.get("seed") is None and "seed" in _parameters(cls):
            params["seed"] = run["seed"]
        return cls(**{**params, **extra})

    data = build("data_configs")
    data_loaders = data.load()
    torch.manual_seed(run["seed"])
    model = build("model_configs")
    learner = build("learner_configs", **learner_kwargs)
    metric = build("metric_configs") if c.get("metric_configs") else None
    logger.debug("built experiment: data=%r model=%s metric=%r", data, type(model).__name__, metric)
    return Experiment(
        data=data, data_loaders=data_loaders, model=model, learner=learner, metric=metric, run=run, config=c
    )


def _auto_sized(cls: type, params: Mapping[str, Any], key: str) -> dict[str, tuple[str, bool]]:
    """The parameters of ``cls`` that section ``key`` leaves to the data (see ``AUTO_SIZED``).

    Returns:
        name -> (the data attribute giving it, whether the data must give it: the config
        wrote ``auto`` or null, or the parameter has no default).
    """
    null_is_auto = key == "model_configs"  # a metric's null is its own default (F1: grow as labels come)
    accepted = _parameters(cls)
    auto = {}
    for name, attr in AUTO_SIZED[key].items():
        value = params.get(name, AUTO)
        if name in accepted and (value == AUTO or (value is None and null_is_auto)):
            auto[name] = (attr, name in params or accepted[name].default is inspect.Parameter.empty)
    return auto


def _data_sizes(cls: type, params: Mapping[str, Any], key: str, data: Any) -> dict[str, Any]:
    """The values of ``_auto_sized`` parameters, read from the data object."""
    sizes = {}
    for name, (attr, needed) in _auto_sized(cls, params, key).items():
        value = getattr(data, attr, None)
        if value is not None:
            sizes[name] = value
        elif needed:
            raise ConfigError([
                f"{key}.{SECTIONS[key]}_parameters.{name}: {params.get(name, AUTO)!r} takes the size from the data's "
                f"{attr!r}, but {type(data).__name__} gives {value!r}; set {name} to an int or remove it"
            ])
    return sizes


# --------------------------------------------------------------------------- helpers


def _plain(cfg: Any) -> Any:
    """A fresh plain-Python copy (interpolations resolved): nothing we do reaches the caller's object."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return copy.deepcopy(cfg)


def _with_run_defaults(c: Any) -> Any:
    """Fill ``run`` keys a plain-dict config leaves out (``load_config`` has merged them already)."""
    if not isinstance(c, dict):
        return c
    run = c.setdefault("run", {})
    if isinstance(run, dict):
        for key, value in RUN_DEFAULTS.items():
            run.setdefault(key, copy.deepcopy(value))
        if isinstance(run["tracking"], dict):
            for key, value in RUN_DEFAULTS["tracking"].items():
                run["tracking"].setdefault(key, value)
    return c


def _signature(cls: type) -> inspect.Signature | None:
    try:
        return inspect.signature(cls, eval_str=True)
    except Exception:  # unresolvable string annotations: check names, skip types
        try:
            return inspect.signature(cls)
        except (TypeError, ValueError):
            return None


def _parameters(cls: type) -> Mapping[str, inspect.Parameter]:
    """``cls``'s named parameters (empty when it has no inspectable signature)."""
    sig = _signature(cls)
    return sig.parameters if sig is not None else {}


def _has_var_kw(sig: inspect.Signature) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _unknown_key(key: str, known: Sequence[str], what: str, prefix: str = "") -> str:
    close = _near(key, known)
    hint = f" — did you mean {prefix + close[0]!r}?" if close else ""
    return f"{prefix}{key}: unknown {what}{hint} (expected: {', '.join(known)})"


def _is_int(v: Any, minimum: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _is_number(v: Any, positive: bool = False) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (v > 0 or not positive)


# Objects a YAML value can never be (so a Union member of these types never matches).
_NOT_FROM_YAML = (torch.Tensor, torch.nn.Module, torch.optim.Optimizer)


def _matches(value: Any, ann: Any) -> bool | None:
    """Whether a YAML value fits an annotation: True, False, or None when it cannot tell."""
    if ann is inspect.Parameter.empty or ann is Any or isinstance(ann, (str, typing.TypeVar)):
        return None
    origin = typing.get_origin(ann)
    if origin is typing.Union or origin is types.UnionType:
        results = [_matches(value, a) for a in typing.get_args(ann)]
        if True in results:
            return True
        return False if all(r is False for r in results) else None
    if ann is None or ann is type(None):
        return value is None
    if ann is bool:
        return isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if ann is float:
        return _is_number(value)
    if ann is str:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence) or ann in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(ann) if a is not Ellipsis]
        if not args:
            return True
        if origin is tuple and len(args) > 1 and len(typing.get_args(ann)) == len(args):
            if len(value) != len(args):
                return False
            results = [_matches(v, a) for v, a in zip(value, args)]
        else:
            results = [_matches(v, args[0]) for v in value]
        if False in results:
            return False
        return True if all(results) else None
    if origin in (dict, Mapping) or ann is dict:
        return isinstance(value, dict)
    if inspect.isclass(ann) and issubclass(ann, _NOT_FROM_YAML):
        return False
    return None


def _describe(ann: Any) -> str:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(ann))
    if ann is None or ann is type(None):
        return "null"
    if inspect.isclass(ann) and not typing.get_args(ann):
        return ann.__name__
    return str(ann).replace("typing.", "").replace("collections.abc.", "")
