"""Experiment configs: load with OmegaConf, validate everything up front, build the objects.

An experiment config has four sections (``data_configs``, ``model_configs``,
``learner_configs``, ``metric_configs``), each naming a class by its dotted path and the keyword
arguments to build it with (``model_class: distlearn.models.MLP``, ``model_parameters:
{hidden_sizes: [256]}``), plus a ``run`` section for the run itself. The learner's parameters
nest the optimizer, loss and lr_scheduler configs the same way. ``configs/digits.yaml`` is a
complete example.

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
    # mode None: online with W&B credentials, offline without
    "tracking": {"backend": "wandb", "project": "distlearn", "entity": None, "name": None, "mode": None},
    # every_n_steps None: checkpoints at epoch ends only; keep_last: complete checkpoints kept
    "checkpoint": {"every_n_steps": None, "keep_last": 2},
    "resume": "auto",  # auto: the newest complete checkpoint in output_dir, else fresh; none; or a checkpoint path
    "timeout_s": 300,  # process-group timeout: a rank that never arrives ends the run after this long
    "nonfinite": "error",  # a NaN/inf training loss: error (stop) or skip (skip that optimizer step)
    # resuming on another number of processes: keep the global batch (global) or the per-process one
    "resume_batch": "global",
}
RESUME_MODES = ("auto", "none")
NONFINITE_MODES = ("error", "skip")
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
    """The shipped configs: ``distlearn/configs`` (wheel package data), else the repo's ``configs/``.

    Raises:
        FileNotFoundError: If neither exists.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / f"{DEFAULT_CONFIG_NAME}.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"no shipped configs found in {here / 'configs'} or {here.parent / 'configs'}; pass a config file path"
    )


def shipped_configs() -> list[Path]:
    """All shipped experiment configs (``configs/*.yaml``), sorted by name."""
    return sorted(config_dir().glob("*.yaml"))


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Load an experiment config, merged onto the run defaults, with command-line overrides.

    Args:
        path: A YAML file, a shipped config's name (``"wine"``), or ``None`` for digits.
        overrides: ``key.path=value`` strings applied last (OmegaConf dotlist syntax, e.g.
            ``run.seed=3``, ``model_configs.model_parameters.hidden_sizes=[128,64]``).

    Returns:
        The merged config, not yet validated (call ``validate_config``).

    Raises:
        ConfigError: If the file is missing or not a YAML mapping, or an override is malformed.
    """
    source = _find_config(path)
    if isinstance(overrides, str):
        overrides = [overrides]
    try:
        file_cfg = OmegaConf.load(source)
    except Exception as exc:  # yaml errors carry the line and column
        raise ConfigError([f"{source}: not valid YAML: {exc}"]) from None
    if not isinstance(file_cfg, DictConfig):
        raise ConfigError([f"{source}: expected a mapping at the top level, got a {type(file_cfg).__name__}"])
    ok = [isinstance(o, str) and "=" in o and not o.startswith("=") for o in overrides]
    problems = [f"override {o!r}: expected key.path=value, e.g. run.seed=3" for o, g in zip(overrides, ok) if not g]
    dotlist = [o for o, g in zip(overrides, ok) if g]
    try:
        cli_cfg = OmegaConf.from_dotlist(dotlist)
    except Exception as exc:
        problems.append(f"overrides {dotlist}: {type(exc).__name__}: {exc}")
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
        shipped = {c.stem: str(c) for c in shipped_configs()}
    except FileNotFoundError:
        shipped = {}
    if p.suffix == "" and str(path) in shipped:
        return Path(shipped[str(path)])
    hint = _hint(p.stem, shipped)
    raise ConfigError([f"config file {str(path)!r}: not found (shipped configs: {sorted(shipped)}){hint}"])


# --------------------------------------------------------------------------- classes


def resolve_class(path: str, key: str) -> type:
    """Import the class a dotted path (``"package.module.Class"``) names.

    Args:
        path: The dotted path.
        key: The config key holding it, for the error message.

    Returns:
        The class.

    Raises:
        ConfigError: If the path names no class; the message suggests the nearest existing
            name (``did you mean 'distlearn.models.MLP'?``).
    """

    def fail(problem: str) -> typing.NoReturn:
        raise ConfigError([f"{key}: {problem}"]) from None

    if not isinstance(path, str) or "." not in path.strip(".") or " " in path:
        fail(f"expected a dotted class path like 'distlearn.models.MLP', got {path!r}")
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        missing = getattr(exc, "name", None) or module_name
        if isinstance(exc, ModuleNotFoundError) and (module_name + ".").startswith(missing + "."):
            fail(f"no class {path!r}: module {missing!r} not found{_module_hint(path, missing)}")
        fail(f"importing {module_name!r} for {path!r} failed: {type(exc).__name__}: {exc}")
    obj = getattr(module, attr, None)
    if obj is None:
        public = [n for n in dir(module) if not n.startswith("_")]
        classes = {n: f"{module_name}.{n}" for n in public if inspect.isclass(getattr(module, n, None))}
        fail(f"no class {path!r}{_hint(attr, classes)}")
    if inspect.ismodule(obj):
        fail(f"{path!r} is a module; expected a class inside it ({path}.<Class>)")
    if not inspect.isclass(obj):
        fail(f"{path!r} is a {type(obj).__name__}, expected a class")
    return obj


def instantiate(section_cfg: Mapping[str, Any] | DictConfig, prefix: str, **extra: Any) -> Any:
    """Build ``<prefix>_class(**<prefix>_parameters, **extra)`` from one config section.

    Args:
        section_cfg: A mapping with ``<prefix>_class`` and optionally ``<prefix>_parameters``.
        prefix: ``"data"``, ``"model"``, ``"optimizer"``, ...
        **extra: Arguments only code has (``params=model.parameters()``); they override the config's.

    Returns:
        The new object; the section itself is not modified.

    Raises:
        ConfigError: If the class cannot be resolved.
    """
    section = _plain(section_cfg)
    cls = resolve_class(section.get(f"{prefix}_class"), f"{prefix}_class")
    return cls(**{**(section.get(f"{prefix}_parameters") or {}), **extra})


def _module_hint(path: str, missing: str) -> str:
    """A hint for a path through a missing module: the same path through its nearest sibling."""
    parent_name, _, leaf = missing.rpartition(".")
    if parent_name:
        try:
            parent = importlib.import_module(parent_name)
        except Exception:
            return ""
        names = [m.name for m in pkgutil.iter_modules(getattr(parent, "__path__", []))]
        names += [n for n in dir(parent) if not n.startswith("_")]
    else:
        names = [m.name for m in pkgutil.iter_modules()]
    fixed = {n: ".".join(p for p in (parent_name, n) if p) + path[len(missing):] for n in sorted(set(names))}
    return _hint(leaf, fixed)


def _hint(word: str, candidates: typing.Iterable[str]) -> str:
    """`` — did you mean 'X'?`` for the closest candidate ignoring case (``Adamw`` finds ``AdamW``),
    or ""; for a mapping, the closest key's value is shown."""
    shown = candidates if isinstance(candidates, Mapping) else {c: c for c in candidates}
    by_lower: dict[str, str] = {}
    for c in shown:
        by_lower.setdefault(c.lower(), c)
    close = difflib.get_close_matches(word.lower(), by_lower, n=1, cutoff=0.6)
    return f" — did you mean {shown[by_lower[close[0]]]!r}?" if close else ""


# --------------------------------------------------------------------------- validation


def validate_config(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Check a whole experiment config before any process group or data exists.

    Every ``*_class`` must resolve; every parameter set (the learner's nested optimizer/
    loss/lr_scheduler configs too) must bind to its class's signature: no unknown or
    missing names, simple annotated types respected, plus the class's ``check_parameters``
    hook if it has one. Learner options and ``run.*`` are type- and range-checked. Nothing
    is built and ``cfg`` is not modified.

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
    if not isinstance(c, dict):
        raise ConfigError([f"expected a mapping at the top level, got {type(c).__name__}"])
    problems: list[str] = []
    _check_keys(c, [*SECTIONS, "run"], "", problems)
    data_cls = None
    for key, prefix in SECTIONS.items():
        if c.get(key) is None:
            if key not in OPTIONAL_SECTIONS:
                problems.append(f"{key}: missing; expected {{{prefix}_class: ..., {prefix}_parameters: {{...}}}}")
            continue
        cls, params = _check_section(c[key], key, prefix, problems)
        at = f"{key}.{prefix}_parameters"
        if cls is None or params is None:
            continue
        if key in AUTO_SIZED:  # the parameters sized from the data count as supplied
            auto = _auto_sized(cls, params, key)
            for name, (attr, needed) in auto.items():
                if needed and data_cls is not None and not hasattr(data_cls, attr):
                    problems.append(
                        f"{at}.{name}: {params.get(name, AUTO)!r} takes the size from the data's {attr!r}, but "
                        f"{data_cls.__module__}.{data_cls.__qualname__} has none; set {name} to an int"
                    )
            given = {k: v for k, v in params.items() if k not in auto}
            _check_parameters(cls, given, at, problems, supplied=set(auto))
        elif prefix == "learner":
            _check_learner(cls, params, at, problems)
        else:
            data_cls = cls  # only the data section gets here
            _check_parameters(cls, params, at, problems)
    _check_run(c.get("run"), problems)
    if problems:
        raise ConfigError(problems)


def _check_keys(mapping: dict, known: Sequence[str], at: str, problems: list[str]) -> None:
    """Report the keys of the mapping at key path ``at`` ("" for the top level) not in ``known``."""
    prefix, what = (f"{at}.", f"key of {at}") if at else ("", "top-level key")
    for k in mapping:
        if k not in known:
            hint = _hint(str(k), {n: prefix + n for n in known})
            problems.append(f"{prefix}{k}: unknown {what}{hint} (expected: {', '.join(known)})")


def _check_values(mapping: dict, checks: dict[str, tuple[Any, str]], at: str, problems: list[str]) -> set[str]:
    """Apply ``{key: (is_valid, expected)}`` to the keys present; returns the keys found wrong."""
    wrong = [k for k, (valid, _) in checks.items() if k in mapping and not valid(mapping[k])]
    for k in wrong:
        v = mapping[k]
        bare_no = k == "mixed_precision" and v is False
        hint = ' — quote it: mixed_precision: "no" (a bare no is YAML for false)' if bare_no else ""
        problems.append(f"{at}.{k}: expected {checks[k][1]}, got {v!r}{hint}")
    return set(wrong)


def _check_section(section: Any, key: str, prefix: str, problems: list[str]) -> tuple[type | None, dict | None]:
    """Check one ``{prefix_class, prefix_parameters}`` mapping; resolve its class."""
    class_key, params_key = f"{prefix}_class", f"{prefix}_parameters"
    if not isinstance(section, dict):
        problems.append(f"{key}: expected a mapping {{{class_key}: ..., {params_key}: {{...}}}}, got {section!r}")
        return None, None
    _check_keys(section, [class_key, params_key], key, problems)
    params = section.get(params_key)
    if params is None:
        params = {}
    elif not isinstance(params, dict):
        problems.append(f"{key}.{params_key}: expected a mapping of parameter names to values, got {params!r}")
        params = None
    if class_key not in section:
        problems.append(f"{key}.{class_key}: missing; expected a dotted class path")
        return None, params
    try:
        return resolve_class(section[class_key], f"{key}.{class_key}"), params
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None, params


def _check_learner(cls: type, params: dict, at: str, problems: list[str]) -> None:
    nested = {k: params[k] for k in LEARNER_NESTED if k in params}
    options = {k: v for k, v in params.items() if k not in nested}
    sig = _signature(cls)
    var_kw = sig is not None and any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    for k, v in nested.items():
        if v is None or (sig is not None and k not in sig.parameters and not var_kw):
            continue  # an unknown one is reported by _check_parameters below
        prefix, supplied = LEARNER_NESTED[k]
        n_cls, n_params = _check_section(v, f"{at}.{k}", prefix, problems)
        if n_cls is not None and n_params is not None:
            _check_parameters(n_cls, n_params, f"{at}.{k}.{prefix}_parameters", problems, excluded=supplied)
    # BackwardLearner's own options first: their messages are more specific than a type mismatch.
    flagged = _check_values(options, {
        "n_epochs": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
        "gradient_accumulation_steps": (lambda v: v is None or _is_int(v) and v >= 1, "null or an int >= 1"),
        "max_grad_norm": (lambda v: v is None or _is_number(v) and v > 0, "null or a number > 0"),
        "mixed_precision": (lambda v: v is None or v in MIXED_PRECISION, f"one of {list(MIXED_PRECISION)}"),
        "scheduler_interval": (lambda v: v in SCHEDULER_INTERVALS, f"one of {list(SCHEDULER_INTERVALS)}"),
        "seed": (lambda v: v is None or _is_int(v) and v >= 0, "null or an int >= 0"),
    }, at, problems)
    # Nested configs are checked above; bind them by name only.
    nested_names = {k: None for k in nested}
    _check_parameters(cls, {**options, **nested_names}, at, problems, excluded=LEARNER_SUPPLIED, flagged=flagged)


def _check_run(run: Any, problems: list[str]) -> None:
    if not isinstance(run, dict):
        problems.append(f"run: expected a mapping (seed, output_dir, overwrite, tracking, ...), got {run!r}")
        return
    _check_keys(run, list(RUN_DEFAULTS), "run", problems)
    _check_values(run, {
        "seed": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
        "output_dir": (lambda v: v is None or isinstance(v, str) and v.strip(),
                       "null (a new folder under runs/) or a path string"),
        "overwrite": (lambda v: isinstance(v, bool), "true or false"),
        "tracking": (lambda v: isinstance(v, dict), "a mapping (backend, project, entity, name, mode)"),
    }, "run", problems)
    tracking = run.get("tracking")
    if isinstance(tracking, dict):
        _check_keys(tracking, list(RUN_DEFAULTS["tracking"]), "run.tracking", problems)
        backend = tracking.get("backend")
        if backend not in TRACKING_BACKENDS:
            hint = " — to turn tracking off write the word none, not null" if backend is None else ""
            hint = _hint(backend, TRACKING_BACKENDS) if isinstance(backend, str) else hint
            problems.append(f"run.tracking.backend: expected one of {list(TRACKING_BACKENDS)}, got {backend!r}{hint}")
        text = (lambda v: v is None or isinstance(v, str) and v.strip(), "null or a non-empty string")
        _check_values(tracking, {"project": text, "entity": text, "name": text, "mode": (
            lambda v: v is None or v in TRACKING_MODES,
            f"null (offline without W&B credentials, online with) or one of {list(TRACKING_MODES)}",
        )}, "run.tracking", problems)
    _check_values(run, {
        "checkpoint": (lambda v: isinstance(v, dict), "a mapping (every_n_steps, keep_last)"),
        "resume": (lambda v: isinstance(v, str) and v.strip(),
                   f"one of {list(RESUME_MODES)} or the path of a checkpoint folder"),
        "timeout_s": (lambda v: _is_number(v) and v > 0, "a number of seconds > 0"),
        "nonfinite": (lambda v: v in NONFINITE_MODES, f"one of {list(NONFINITE_MODES)}"),
        "resume_batch": (lambda v: v in ("global", "per_process"), "one of ['global', 'per_process']"),
    }, "run", problems)
    ckpt = run.get("checkpoint")
    if isinstance(ckpt, dict):
        _check_keys(ckpt, list(RUN_DEFAULTS["checkpoint"]), "run.checkpoint", problems)
        _check_values(ckpt, {
            "every_n_steps": (lambda v: v is None or _is_int(v) and v >= 1,
                              "null (epoch ends only) or an int >= 1 (optimizer steps)"),
            "keep_last": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
        }, "run.checkpoint", problems)


def _check_parameters(
    cls: type, params: dict, at: str, problems: list[str],
    excluded: typing.AbstractSet[str] = frozenset(),
    supplied: typing.AbstractSet[str] = frozenset(),
    flagged: typing.AbstractSet[str] = frozenset(),
) -> None:
    """Bind ``params`` to ``cls``'s signature and report every mismatch under key ``at``.

    ``excluded``: arguments only distlearn passes (must not be in the config);
    ``supplied``: arguments filled in later (not missing when absent);
    ``flagged``: keys already reported wrong (one problem per key is enough).
    """
    sig = _signature(cls)
    if sig is None:  # e.g. a C extension class without a signature: nothing to check
        return
    name, flagged = f"{cls.__module__}.{cls.__qualname__}", set(flagged)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = [p.name for p in sig.parameters.values() if p.kind in kinds and p.name not in excluded]
    var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    for key in params:
        if key in excluded:
            problems.append(f"{at}.{key}: set by distlearn at build time; remove it from the config")
        elif key not in accepted and not var_kw:
            hint = _hint(str(key), accepted)
            problems.append(f"{at}.{key}: {name} has no parameter {key!r}{hint} (accepted: {', '.join(accepted)})")
    for p in sig.parameters.values():
        required = p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.default is p.empty
        if required and p.name not in params and p.name not in excluded and p.name not in supplied:
            problems.append(f"{at}: missing required parameter {p.name!r} of {name}")
    for key, value in params.items():
        p = sig.parameters.get(key)
        if p is not None and key not in excluded and key not in flagged and _matches(value, p.annotation) is False:
            flagged.add(key)
            problems.append(f"{at}.{key}: expected {_describe(p.annotation)}, got {value!r} ({type(value).__name__})")
    hook = getattr(cls, "check_parameters", None)
    if callable(hook):
        own = {k: v for k, v in params.items() if k not in excluded and k not in flagged}
        try:
            problems.extend(f"{at}.{key}: {message}" for key, message in hook(own))
        except Exception as exc:  # a hook must not hide the other problems
            problems.append(f"{at}: {name}.check_parameters failed: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- building


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
        validate_config(cfg)
    c = _with_run_defaults(_plain(cfg))
    run = c["run"]

    def build(key: str, **extra: Any) -> Any:
        prefix = SECTIONS[key]
        cls = resolve_class(c[key][f"{prefix}_class"], f"{key}.{prefix}_class")
        at = f"{key}.{prefix}_parameters"
        params = dict(c[key].get(f"{prefix}_parameters") or {})
        auto = _auto_sized(cls, params, key) if key in AUTO_SIZED else {}
        for name, (attr, needed) in auto.items():  # sizes left to the data
            if (size := getattr(data, attr, None)) is not None:
                params[name] = size
            elif needed:
                raise ConfigError([
                    f"{at}.{name}: {params.get(name, AUTO)!r} takes the size from the data's {attr!r}, "
                    f"but {type(data).__name__} gives None; set {name} to an int or remove it"
                ])
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
    """The parameters of ``cls`` left to the data: name -> (data attribute, whether the data must
    give it: the config wrote ``auto`` or null, or the parameter has no default)."""
    null_is_auto = key == "model_configs"  # a metric's null is its own default (F1: grow as labels come)
    accepted = _parameters(cls)
    auto = {}
    for name, attr in AUTO_SIZED[key].items():
        value = params.get(name, AUTO)
        if name in accepted and (value == AUTO or (value is None and null_is_auto)):
            auto[name] = (attr, name in params or accepted[name].default is inspect.Parameter.empty)
    return auto


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
        for section in ("tracking", "checkpoint"):
            if isinstance(run[section], dict):
                for key, value in RUN_DEFAULTS[section].items():
                    run[section].setdefault(key, value)
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
    sig = _signature(cls)
    return sig.parameters if sig is not None else {}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# Objects a YAML value can never be (so a Union member of these types never matches).
_NOT_FROM_YAML = (torch.Tensor, torch.nn.Module, torch.optim.Optimizer)


def _matches(value: Any, ann: Any) -> bool | None:
    """Whether a YAML value fits an annotation: True, False, or None when it cannot tell."""
    if ann is inspect.Parameter.empty or ann is Any or isinstance(ann, (str, typing.TypeVar)):
        return None
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Union or origin is types.UnionType:
        results = [_matches(value, a) for a in args]
        return True if True in results else (False if all(r is False for r in results) else None)
    if ann is None or ann is type(None):
        return value is None
    if ann is bool or ann is str:
        return isinstance(value, ann)
    if ann is int or ann is float:
        return _is_int(value) if ann is int else _is_number(value)
    if origin in (list, tuple, Sequence) or ann in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        items = [a for a in args if a is not Ellipsis]
        if not items:
            return True
        if origin is tuple and len(items) > 1 and len(args) == len(items):  # tuple[X, Y]: fixed length
            if len(value) != len(items):
                return False
            results = [_matches(v, a) for v, a in zip(value, items)]
        else:
            results = [_matches(v, items[0]) for v in value]
        return False if False in results else (True if all(results) else None)
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
