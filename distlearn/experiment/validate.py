"""Validating an experiment config: every problem found up front, each under its key path."""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from ..options import did_you_mean
from ..specs import ConfigError, read_spec, spec_keys
from ..training.settings import CONFIG_CHECKS, MODEL_OPTION_KEYS, group_model_options
from .checks import check_keys, check_values
from .defaults import (
    AUTO,
    AUTO_SIZED,
    LEARNER_NESTED,
    LEARNER_SUPPLIED,
    OPTIONAL_SECTIONS,
    RUN_DEFAULTS,
    SECTIONS,
    plain,
    with_run_defaults,
)
from .load import first_line, interpolation_problems
from .parameters import auto_sized, check_parameters, parameters_of, resolve_class, signature
from .run_section import check_output_folder, check_run, check_timed_checkpoints
from .weights import INIT_FROM, check_init_from
from .selection_config import check_selection

__all__ = ["section_entries", "validate_config"]


def validate_config(cfg: DictConfig | Mapping[str, Any], *, check_output_dir: bool = True) -> None:
    """Check a whole experiment config before any process group or data exists.

    Every ``*_class`` must resolve; every parameter set (the learner's nested optimizer/
    loss/lr_scheduler configs too) must bind to its class's signature: no unknown or
    missing names, simple annotated types respected, plus the class's ``check_parameters``
    hook if it has one. Learner options and ``run.*`` are type- and range-checked. When all
    that passes, the learner's loss, optimizer and scheduler are built on a stand-in
    parameter, so that values the classes themselves refuse (a negative lr) are reported too;
    they are reported after the other problems are fixed. Nothing else is built and ``cfg``
    is not modified.

    Args:
        cfg: A config from ``load_config`` or a plain dict of the same shape.
        check_output_dir: Also check that ``run.output_dir`` (or ``runs/``) could be written
            (read-only checks; ``build_experiment``, which writes nothing, skips them).

    Raises:
        ConfigError: Listing every problem found, each naming the key path, what was
            expected, what was found and, where one exists, the likely fix.
    """
    if isinstance(cfg, DictConfig) and (broken := interpolation_problems(cfg)):
        raise ConfigError(broken)  # each names its key: nothing else can be read until they resolve
    try:
        c = with_run_defaults(plain(cfg))
    except Exception as exc:  # what interpolation_problems could not pin to a key
        raise ConfigError([f"resolving the config: {type(exc).__name__}: {first_line(exc)}"]) from None
    if not isinstance(c, dict):
        raise ConfigError([f"expected a mapping at the top level, got {type(c).__name__}"])
    problems: list[str] = []
    builds: list[tuple[dict[str, tuple[type, dict]], str]] = []  # the learner's nested configs, to build last
    metrics: list[tuple[type, dict, str]] = []  # metrics that bound their parameters, to build last
    elsewhere = _key_paths(c)
    check_keys(c, [*SECTIONS, "run"], "", problems, elsewhere)
    data_cls = None
    for key, prefix in SECTIONS.items():
        if c.get(key) is None:
            if key not in OPTIONAL_SECTIONS:
                problems.append(f"{key}: missing; expected {{{prefix}_class: ..., {prefix}_parameters: {{...}}}}")
            continue
        for label, section in section_entries(c, key, problems):
            cls, params = _check_section(section, label, prefix, problems)
            at = f"{label}.{prefix}_parameters"
            if cls is None or params is None:
                continue
            if key in AUTO_SIZED:
                buildable = _check_sized(cls, params, key, at, data_cls, problems)
                if key == "metric_configs" and buildable is not None:
                    metrics.append((cls, buildable, at))  # cheap to build: values the class refuses are found now
            elif prefix == "learner":
                builds.append((_check_learner(cls, params, at, problems), at))
            else:
                data_cls = cls  # only the data section gets here
                check_parameters(cls, params, at, problems)
    check_run(c.get("run"), problems, elsewhere)
    check_timed_checkpoints(c.get("run"), c.get("learner_configs"), problems)
    check_selection(c, problems)
    if check_output_dir:
        check_output_folder(c.get("run"), problems)
    if not problems:  # building an optimizer imports torch's compiler (~1-2 s): only once all else is right
        for sections, at in builds:
            _check_builds(sections, at, problems)
        for cls, params, at in metrics:
            _try_construct(cls, params, at, problems)
    if problems:
        raise ConfigError(problems)


def _check_sized(
    cls: type, params: dict, key: str, at: str, data_cls: type | None, problems: list[str]
) -> dict | None:
    """Check a section with sizes left to the data (those count as supplied); returns the parameters
    given, when they bound and every size left out has the class's default (so it can be built now)."""
    auto = auto_sized(cls, params, key)
    for name, (attr, needed) in auto.items():
        if needed and data_cls is not None and not hasattr(data_cls, attr):
            problems.append(
                f"{at}.{name}: {params.get(name, AUTO)!r} takes the size from the data's {attr!r}, but "
                f"{data_cls.__module__}.{data_cls.__qualname__} has none; set {name} to an int"
            )
    given = {k: v for k, v in params.items() if k not in auto}
    before = len(problems)
    check_parameters(cls, given, at, problems, supplied=set(auto))
    defaults = all(parameters_of(cls)[name].default is not inspect.Parameter.empty for name in auto)
    return given if len(problems) == before and defaults else None


def section_entries(c: dict, key: str, problems: list[str]) -> list[tuple[str, Any]]:
    """``(key path, section)`` pairs: one section, or for ``metric_configs`` a list of them
    (several metrics, reduced together; the first is the primary score)."""
    if key != "metric_configs" or not isinstance(c[key], list):
        return [(key, c[key])]
    if not c[key]:
        problems.append(f"{key}: an empty list; give one or more {{metric_class: ...}} entries, or null for no metric")
    return [(f"{key}[{i}]", section) for i, section in enumerate(c[key])]


def _key_paths(c: dict) -> dict[str, list[str]]:
    """Key name -> the full paths of the config's keys of that name, and of the run keys it may leave out."""
    paths: dict[str, list[str]] = {}

    def walk(node: Any, at: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                path = f"{at}.{k}" if at else str(k)
                if at:
                    paths.setdefault(str(k), []).append(path)
                walk(v, path)

    walk({k: v for k, v in c.items() if k in (*SECTIONS, "run")}, "")
    for k in RUN_DEFAULTS:
        if f"run.{k}" not in paths.setdefault(k, []):
            paths[k].append(f"run.{k}")
    return paths


def _check_section(section: Any, key: str, prefix: str, problems: list[str]) -> tuple[type | None, dict | None]:
    """Check one ``{prefix_class, prefix_parameters}`` mapping; resolve its class."""
    class_key, params_key = spec_keys(prefix)
    if not isinstance(section, dict):
        problems.append(f"{key}: expected a mapping {{{class_key}: ..., {params_key}: {{...}}}}, got {section!r}")
        return None, None
    own = [INIT_FROM] if prefix == "model" else []  # the model's starting weights (weights.py)
    check_keys(section, [class_key, params_key, *own], key, problems)
    if own:
        check_init_from(section.get(INIT_FROM), f"{key}.{INIT_FROM}", problems)
    spec = read_spec(section, prefix)
    params = spec.parameters
    if not isinstance(params, dict):
        problems.append(f"{key}.{params_key}: expected a mapping of parameter names to values, got {params!r}")
        params = None
    if not spec.has_class:
        problems.append(f"{key}.{class_key}: missing; expected a dotted class path")
        return None, params
    try:
        return resolve_class(spec.path, f"{key}.{class_key}"), params
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None, params


def _check_learner(cls: type, params: dict, at: str, problems: list[str]) -> dict[str, tuple[type, dict]]:
    """Check the learner's options and nested configs; returns the nested configs that passed
    (``{key: (class, parameters)}``), for :func:`_check_builds`."""
    nested = {k: params[k] for k in LEARNER_NESTED if k in params}
    options = {k: v for k, v in params.items() if k not in nested}
    buildable: dict[str, tuple[type, dict]] = {}
    sig = signature(cls)
    var_kw = sig is not None and any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    for k, v in nested.items():
        if v is None or (sig is not None and k not in sig.parameters and not var_kw):
            continue  # an unknown one is reported by _check_parameters below
        prefix, supplied = LEARNER_NESTED[k]
        before = len(problems)
        n_cls, n_params = _check_section(v, f"{at}.{k}", prefix, problems)
        if n_cls is not None and n_params is not None:
            check_parameters(n_cls, n_params, f"{at}.{k}.{prefix}_parameters", problems, excluded=supplied)
            if len(problems) == before:
                buildable[k] = (n_cls, n_params)
    # BackwardLearner's own options first: their messages are more specific than a type mismatch.
    flagged = check_values(options, CONFIG_CHECKS, at, problems)
    if isinstance(options.get("model_options"), dict):  # the Python API's grouping, written out: same keys, ranges
        written = options["model_options"]
        check_keys(written, MODEL_OPTION_KEYS, f"{at}.model_options", problems)
        flagged |= check_values(written, CONFIG_CHECKS, f"{at}.model_options", problems)
    grouped = sig is not None and "model_options" in sig.parameters
    if grouped:
        if flagged & {"model_options", *MODEL_OPTION_KEYS}:
            flagged.add("model_options")
        options = group_model_options(options)  # compile, gradient_checkpointing: one keyword of the learner
    # Nested configs are checked above; bind them by name only.
    nested_names = {k: None for k in nested}
    check_parameters(cls, {**options, **nested_names}, at, problems, excluded=LEARNER_SUPPLIED, flagged=flagged,
                     also=MODEL_OPTION_KEYS if grouped else ())
    return buildable


def _check_builds(sections: dict[str, tuple[type, dict]], at: str, problems: list[str]) -> None:
    """Build the loss, optimizer and scheduler on a stand-in parameter: what the classes themselves
    refuse (a negative lr, an unknown scheduler mode) is found now, not after the data is loaded.

    Run once the rest of the config is right: the first optimizer built in a process imports
    ``torch._dynamo`` (about as long as importing torch itself), which a config error found
    without building need not wait for."""
    if not sections:
        return
    import torch

    stand_in = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = None
    if "loss_configs" in sections:
        _try_build("loss_configs", *sections["loss_configs"], at, problems)
    if "optimizer_configs" in sections:
        optimizer = _try_build("optimizer_configs", *sections["optimizer_configs"], at, problems, stand_in)
    if "lr_scheduler_configs" in sections:
        if optimizer is None:  # none configured (an object given in code) or refused: any will do
            optimizer = torch.optim.SGD(stand_in, lr=0.1)
        _try_build("lr_scheduler_configs", *sections["lr_scheduler_configs"], at, problems, optimizer)


def _try_build(key: str, cls: type, params: dict, at: str, problems: list[str], *args: Any) -> Any:
    """The learner's nested config ``key`` built: ``cls(*args, **params)``, or None and a problem (see
    :func:`_try_construct`)."""
    return _try_construct(cls, params, f"{at}.{key}.{LEARNER_NESTED[key][0]}_parameters", problems, *args)


def _try_construct(cls: type, params: dict, where: str, problems: list[str], *args: Any) -> Any:
    """``cls(*args, **params)``, or None and a problem naming the parameter it refused (the one whose
    removal lets it build, under key path ``where``), with the class's own words and, for a misspelled
    choice the message lists, the closest one."""
    import warnings

    def build(kwargs: dict) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls(*args, **copy.deepcopy(kwargs))

    try:
        return build(params)
    except Exception as exc:
        culprit = None
        for name in params:
            try:
                build({k: v for k, v in params.items() if k != name})
            except Exception:
                continue
            culprit = name
            break
        where += f".{culprit}" if culprit else ""
        what = f"the value {params[culprit]!r}" if culprit else "these parameters"
        fix = f"; fix {culprit} or remove it to use the default" if culprit else ""
        if culprit and isinstance(params[culprit], str):  # e.g. "average must be one of 'binary', 'macro', ..."
            choices = [c for c in re.findall(r"'([^']+)'", str(exc)) if c != params[culprit]]
            if hint := did_you_mean(params[culprit], choices):
                fix = f"{hint} (or remove {culprit} to use the default)"
        problems.append(f"{where}: {cls.__module__}.{cls.__qualname__} refuses {what}: {first_line(exc)}{fix}")
        return None
