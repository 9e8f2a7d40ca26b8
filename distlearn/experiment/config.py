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
import importlib
import inspect
import logging
import pkgutil
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..options import (
    DEFAULT_KEEP_LAST,
    DEFAULT_RESUME_BATCH,
    MIXED_PRECISION,
    NONFINITE_MODES,
    RESUME_BATCH_MODES,
    RESUME_MODES,
    SCHEDULER_INTERVALS,
    TRACKING_BACKENDS,
    TRACKING_MODES,
    did_you_mean,
    is_int,
    is_number,
)

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
    "model_configs": {"in_features": "n_features", "out_features": "n_outputs", "vocab_size": "vocab_size"},
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
    "checkpoint": {"every_n_steps": None, "keep_last": DEFAULT_KEEP_LAST},
    "resume": "auto",  # auto: the newest complete checkpoint in output_dir, else fresh; none; or a checkpoint path
    "timeout_s": 300,  # process-group timeout: a rank that never arrives ends the run after this long
    "nonfinite": "error",  # a NaN/inf training loss: error (stop) or skip (skip that optimizer step)
    # resuming on another number of processes: keep the global batch (global) or the per-process one
    "resume_batch": DEFAULT_RESUME_BATCH,
}

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
    model: Any  # a torch.nn.Module
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
    here = Path(__file__).resolve().parents[1]  # the package folder: distlearn/
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

    A tinybig experiment file (a top-level ``configurations:`` mapping with ``tinybig.*``
    class paths) is translated to distlearn's layout on the way; see ``distlearn.tinybig``.

    Args:
        path: A YAML file, a shipped config's name (``"wine"``), or ``None`` for digits.
        overrides: ``key.path=value`` strings applied last (OmegaConf dotlist syntax, e.g.
            ``run.seed=3``, ``model_configs.model_parameters.hidden_sizes=[128,64]``).

    Returns:
        The merged config, not yet validated (call ``validate_config``).

    Raises:
        ConfigError: If the file is missing, unreadable (a folder, a pipe, no permission) or
            not a YAML mapping, or an override is malformed (each bad one is named).
    """
    source = _find_config(path)
    if isinstance(overrides, str):
        overrides = [overrides]
    file_cfg = _read_yaml(source)
    from .tinybig import from_tinybig, is_tinybig

    if is_tinybig(file_cfg):
        file_cfg = OmegaConf.create(from_tinybig(OmegaConf.to_container(file_cfg), source=str(source)))
    problems: list[str] = []
    parsed = []
    for o in overrides:
        cli_cfg, problem = _parse_override(o)
        if problem:
            problems.append(problem)
        else:
            parsed.append((o, cli_cfg))
    if problems:
        raise ConfigError(problems)
    try:
        merged = OmegaConf.merge(OmegaConf.create({"run": RUN_DEFAULTS}), file_cfg)
    except Exception as exc:  # e.g. `run: 5` in the file
        raise ConfigError([f"{source}: {_first_line(exc)}"]) from None
    for o, cli_cfg in parsed:  # one by one, so that a failure names its override
        try:
            merged = OmegaConf.merge(merged, cli_cfg)
        except Exception as exc:
            raise ConfigError([f"override {o!r}: {_first_line(exc)}"]) from None
    if len(parsed) > 1:  # `run=5 run.seed=3` rebuilt `run` without its defaults: fill them in again
        merged = OmegaConf.merge(OmegaConf.create({"run": RUN_DEFAULTS}), merged)
    return merged


def _find_config(path: str | Path | None) -> Path:
    if path is None:
        return config_dir() / f"{DEFAULT_CONFIG_NAME}.yaml"
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        inside = sorted(c.name for c in p.glob("*.y*ml"))
        example = f" (it holds {', '.join(inside[:4])}{', ...' if len(inside) > 4 else ''}: " \
            f"e.g. {str(p / inside[0])!r})" if inside else ""
        raise ConfigError([f"config file {str(path)!r}: is a folder; pass a YAML file{example}"])
    if p.exists():  # never opened: reading a pipe would wait for a writer
        raise ConfigError([
            f"config file {str(path)!r}: not a regular file (a pipe, socket or device); "
            f"write the config to a .yaml file and pass its path"
        ])
    try:
        shipped = {c.stem: str(c) for c in shipped_configs()}
    except FileNotFoundError:
        shipped = {}
    if p.suffix == "" and str(path) in shipped:
        return Path(shipped[str(path)])
    hint = did_you_mean(p.stem, shipped)
    if not hint and "." in str(path) and p.suffix not in (".yaml", ".yml") and "/" not in str(path):
        hint = f" — an override needs a value: {path}=VALUE"
    raise ConfigError([f"config file {str(path)!r}: not found (shipped configs: {sorted(shipped)}){hint}"])


def _read_yaml(source: Path) -> DictConfig:
    """The file's YAML mapping; unreadable files and bad YAML are ``ConfigError``s naming the file."""
    try:
        text = source.read_text(encoding="utf-8")
    except PermissionError:
        raise ConfigError([
            f"config file {str(source)!r}: permission denied; make it readable (chmod u+r) or copy it"
        ]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"config file {str(source)!r}: not a UTF-8 text file ({exc.reason} at byte {exc.start})"]) \
            from None
    except OSError as exc:
        raise ConfigError([f"config file {str(source)!r}: cannot be read: {exc.strerror or exc}"]) from None
    try:
        file_cfg = OmegaConf.create(text) if text.strip() else OmegaConf.create({})
    except Exception as exc:  # yaml errors carry the line and column
        raise ConfigError([f"{source}: not valid YAML: {exc}"]) from None
    if not isinstance(file_cfg, DictConfig):
        raise ConfigError([f"{source}: expected a mapping at the top level, got a {type(file_cfg).__name__}"])
    return file_cfg


def _parse_override(override: Any) -> tuple[DictConfig | None, str | None]:
    """One ``key.path=value`` override as a config, or the problem with it (naming it)."""
    example = "expected key.path=value, e.g. run.seed=3"
    if not isinstance(override, str) or "=" not in override:
        return None, f"override {override!r}: no '='; {example}"
    key, _, value = override.partition("=")
    if not key.strip() or any(not part.strip() for part in key.split(".")):
        return None, f"override {override!r}: the key {key!r} has an empty part; {example}"
    if " " in key.strip():
        return None, f"override {override!r}: the key {key!r} has a space; {example}"
    try:
        return OmegaConf.from_dotlist([override]), None
    except Exception as exc:
        return None, (
            f"override {override!r}: the value {value!r} is not valid ({_first_line(exc)}); "
            "close brackets and quotes, and quote the whole argument in the shell: 'key=[1,2]'"
        )


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without OmegaConf's ``full_key:`` trailer."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = " ".join(ln for ln in lines[:3] if not ln.startswith(("full_key:", "object_type", "in \"<unicode")))
    return text or type(exc).__name__


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
    if path.startswith("tinybig."):  # left by the tinybig translation: no distlearn counterpart
        from .tinybig import unmapped_problem

        raise ConfigError([unmapped_problem(path, key)])
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
        public = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
        classes = {n: f"{module_name}.{n}" for n in public if inspect.isclass(getattr(module, n, None))}
        fail(f"no class {path!r}{did_you_mean(attr, classes, prefixes=True)}")
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
        # modules only: a module path never runs through a class (distlearn.Metrics is not distlearn.metrics)
        names += [n for n in dir(parent) if not n.startswith("_") and inspect.ismodule(getattr(parent, n, None))]
    else:  # a top-level package: only a near-certain typo is worth naming (not 'typing' for 'tinybig')
        names = [m.name for m in pkgutil.iter_modules()]
    fixed = {n: ".".join(p for p in (parent_name, n) if p) + path[len(missing):] for n in sorted(set(names))}
    return did_you_mean(leaf, fixed, cutoff=0.6 if parent_name else 0.8)


# --------------------------------------------------------------------------- validation


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
    try:
        c = _with_run_defaults(_plain(cfg))
    except Exception as exc:  # a broken ${interpolation}
        raise ConfigError([f"resolving the config: {type(exc).__name__}: {exc}"]) from None
    if not isinstance(c, dict):
        raise ConfigError([f"expected a mapping at the top level, got {type(c).__name__}"])
    problems: list[str] = []
    builds: list[tuple[dict[str, tuple[type, dict]], str]] = []  # the learner's nested configs, to build last
    metrics: list[tuple[type, dict, str]] = []  # metrics that bound their parameters, to build last
    elsewhere = _key_paths(c)
    _check_keys(c, [*SECTIONS, "run"], "", problems, elsewhere)
    data_cls = None
    for key, prefix in SECTIONS.items():
        if c.get(key) is None:
            if key not in OPTIONAL_SECTIONS:
                problems.append(f"{key}: missing; expected {{{prefix}_class: ..., {prefix}_parameters: {{...}}}}")
            continue
        for label, section in _sections(c, key, problems):
            cls, params = _check_section(section, label, prefix, problems)
            at = f"{label}.{prefix}_parameters"
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
                before = len(problems)
                _check_parameters(cls, given, at, problems, supplied=set(auto))
                defaults = all(_parameters(cls)[name].default is not inspect.Parameter.empty for name in auto)
                if key == "metric_configs" and len(problems) == before and defaults:  # sizes: the class's default
                    metrics.append((cls, given, at))  # cheap to build: values the class refuses are found now
            elif prefix == "learner":
                builds.append((_check_learner(cls, params, at, problems), at))
            else:
                data_cls = cls  # only the data section gets here
                _check_parameters(cls, params, at, problems)
    _check_run(c.get("run"), problems, elsewhere)
    if check_output_dir:
        _check_output_dir(c.get("run"), problems)
    if not problems:  # building an optimizer imports torch's compiler (~1-2 s): only once all else is right
        for sections, at in builds:
            _check_builds(sections, at, problems)
        for cls, params, at in metrics:
            _try_construct(cls, params, at, problems)
    if problems:
        raise ConfigError(problems)


def _sections(c: dict, key: str, problems: list[str]) -> list[tuple[str, Any]]:
    """``(key path, section)`` pairs: one section, or for ``metric_configs`` a list of them
    (several metrics, reduced together; the first is the primary score)."""
    if key != "metric_configs" or not isinstance(c[key], list):
        return [(key, c[key])]
    if not c[key]:
        problems.append(f"{key}: an empty list; give one or more {{metric_class: ...}} entries, or null for no metric")
    return [(f"{key}[{i}]", section) for i, section in enumerate(c[key])]


def _check_keys(mapping: dict, known: Sequence[str], at: str, problems: list[str],
                elsewhere: Mapping[str, Sequence[str]] | None = None) -> None:
    """Report the keys of the mapping at key path ``at`` ("" for the top level) not in ``known``.

    ``elsewhere``: key name -> the full paths where the config has (or takes) a key of that name,
    for a key written at the wrong level (``n_epochs=5`` for ``learner_configs.learner_parameters.n_epochs=5``).
    """
    prefix, what = (f"{at}.", f"key of {at}") if at else ("", "top-level key")
    for k in mapping:
        if k not in known:
            hint = did_you_mean(str(k), {n: prefix + n for n in known})
            paths = [p for p in (elsewhere or {}).get(str(k), ()) if p != f"{prefix}{k}"]
            if not hint and paths:
                hint = f" — did you mean {' or '.join(repr(p) for p in paths[:3])}?"
            problems.append(f"{prefix}{k}: unknown {what}{hint} (expected: {', '.join(known)})")


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


def _check_values(mapping: dict, checks: dict[str, tuple[Any, str]], at: str, problems: list[str]) -> set[str]:
    """Apply ``{key: (is_valid, expected)}`` to the keys present; returns the keys found wrong."""
    wrong = [k for k, (valid, _) in checks.items() if k in mapping and not valid(mapping[k])]
    for k in wrong:
        v = mapping[k]
        bare_no = k == "mixed_precision" and v is False
        hint = ' — quote it: mixed_precision: "no" (a bare no is YAML for false)' if bare_no else ""
        if isinstance(v, str) and not hint:  # a misspelled choice: the closest of the quoted ones
            hint = did_you_mean(v, re.findall(r"'([^']+)'", checks[k][1]))
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


def _check_learner(cls: type, params: dict, at: str, problems: list[str]) -> dict[str, tuple[type, dict]]:
    """Check the learner's options and nested configs; returns the nested configs that passed
    (``{key: (class, parameters)}``), for :func:`_check_builds`."""
    nested = {k: params[k] for k in LEARNER_NESTED if k in params}
    options = {k: v for k, v in params.items() if k not in nested}
    buildable: dict[str, tuple[type, dict]] = {}
    sig = _signature(cls)
    var_kw = sig is not None and any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    for k, v in nested.items():
        if v is None or (sig is not None and k not in sig.parameters and not var_kw):
            continue  # an unknown one is reported by _check_parameters below
        prefix, supplied = LEARNER_NESTED[k]
        before = len(problems)
        n_cls, n_params = _check_section(v, f"{at}.{k}", prefix, problems)
        if n_cls is not None and n_params is not None:
            _check_parameters(n_cls, n_params, f"{at}.{k}.{prefix}_parameters", problems, excluded=supplied)
            if len(problems) == before:
                buildable[k] = (n_cls, n_params)
    # BackwardLearner's own options first: their messages are more specific than a type mismatch.
    flagged = _check_values(options, {
        "n_epochs": (lambda v: is_int(v) and v >= 1, "an int >= 1"),
        "gradient_accumulation_steps": (lambda v: v is None or is_int(v) and v >= 1, "null or an int >= 1"),
        "max_grad_norm": (lambda v: v is None or is_number(v) and v > 0, "null or a number > 0"),
        "mixed_precision": (lambda v: v is None or v in MIXED_PRECISION, f"one of {list(MIXED_PRECISION)}"),
        "scheduler_interval": (lambda v: v in SCHEDULER_INTERVALS, f"one of {list(SCHEDULER_INTERVALS)}"),
        "seed": (lambda v: v is None or is_int(v) and v >= 0, "null or an int >= 0"),
    }, at, problems)
    # Nested configs are checked above; bind them by name only.
    nested_names = {k: None for k in nested}
    _check_parameters(cls, {**options, **nested_names}, at, problems, excluded=LEARNER_SUPPLIED, flagged=flagged)
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
        problems.append(f"{where}: {cls.__module__}.{cls.__qualname__} refuses {what}: {_first_line(exc)}{fix}")
        return None


def _check_run(run: Any, problems: list[str], elsewhere: Mapping[str, Sequence[str]] | None = None) -> None:
    if not isinstance(run, dict):
        problems.append(f"run: expected a mapping (seed, output_dir, overwrite, tracking, ...), got {run!r}")
        return
    _check_keys(run, list(RUN_DEFAULTS), "run", problems, elsewhere)
    _check_values(run, {
        "seed": (lambda v: is_int(v) and v >= 0, "an int >= 0"),
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
            hint = did_you_mean(backend, TRACKING_BACKENDS) if isinstance(backend, str) else hint
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
        "timeout_s": (lambda v: is_number(v) and v > 0, "a number of seconds > 0"),
        "nonfinite": (lambda v: v in NONFINITE_MODES, f"one of {list(NONFINITE_MODES)}"),
        "resume_batch": (lambda v: v in RESUME_BATCH_MODES, f"one of {list(RESUME_BATCH_MODES)}"),
    }, "run", problems)
    ckpt = run.get("checkpoint")
    if isinstance(ckpt, dict):
        _check_keys(ckpt, list(RUN_DEFAULTS["checkpoint"]), "run.checkpoint", problems)
        _check_values(ckpt, {
            "every_n_steps": (lambda v: v is None or is_int(v) and v >= 1,
                              "null (epoch ends only) or an int >= 1 (optimizer steps)"),
            "keep_last": (lambda v: is_int(v) and v >= 1, "an int >= 1"),
        }, "run.checkpoint", problems)


def _check_output_dir(run: Any, problems: list[str]) -> None:
    """An output folder that cannot be written is found now, before any training (read-only checks)."""
    import os

    if not isinstance(run, dict):
        return
    value = run.get("output_dir")
    if value is not None and not (isinstance(value, str) and value.strip()):
        return  # reported by _check_run
    path = Path(value).expanduser() if value is not None else Path("runs")
    shown = f"run.output_dir {str(path)!r}" if value is not None else f"the default output folder {str(path.absolute())!r}"
    if path.exists() and not path.is_dir():
        problems.append(f"run.output_dir: {str(path)!r} exists and is not a folder; choose another path")
        return
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        problems.append(f"run.output_dir: {shown} lies under {str(existing)!r}, which is not a folder; choose another path")
    elif not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" ({str(existing)!r}, where it would be created)"
        problems.append(
            f"run.output_dir: {shown} is not writable{where}; choose a folder you can write (run.output_dir=...)"
        )


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
            hint = did_you_mean(str(key), accepted)
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
        validate_config(cfg, check_output_dir=False)  # nothing is written here
    c = _with_run_defaults(_plain(cfg))
    run = c["run"]

    def build(key: str, section: Any = None, label: str | None = None, **extra: Any) -> Any:
        prefix, section, label = SECTIONS[key], c[key] if section is None else section, label or key
        cls = resolve_class(section[f"{prefix}_class"], f"{label}.{prefix}_class")
        at = f"{label}.{prefix}_parameters"
        params = dict(section.get(f"{prefix}_parameters") or {})
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
        if key == "model_configs":
            _check_outputs(params.get("out_features"), data, f"{at}.out_features")
        return cls(**{**params, **extra})

    import torch

    data = build("data_configs")
    data_loaders = data.load()
    torch.manual_seed(run["seed"])
    model = build("model_configs")
    learner = build("learner_configs", **learner_kwargs)
    metric = None
    if c.get("metric_configs"):
        metrics = [build("metric_configs", section, label) for label, section in _sections(c, "metric_configs", [])]
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


def _not_from_yaml() -> tuple[type, ...]:
    """Types a YAML value can never be (so a Union member of these types never matches)."""
    import torch

    return (torch.Tensor, torch.nn.Module, torch.optim.Optimizer)


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
        return is_int(value) if ann is int else is_number(value)
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
    if inspect.isclass(ann) and issubclass(ann, _not_from_yaml()):
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
