"""Class specs: the ``{kind}_class`` / ``{kind}_parameters`` mappings configs name classes with.

One owner for the format, read by the learner (its optimizer, loss and lr_scheduler configs)
and by the experiment config layer (every section): :func:`spec_keys` names the two keys,
:func:`read_spec` splits a mapping into them, :func:`resolve_class` turns a dotted class path
into the class with a "did you mean" hint. Each caller words its own problems; nothing is
built here. Nothing here imports torch (a config error is reported without it) nor anything
of distlearn but ``options``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .options import did_you_mean

__all__ = ["ClassSpec", "ConfigError", "read_spec", "resolve_class", "spec_keys"]


class ConfigError(ValueError):
    """An invalid experiment config; ``problems`` lists every problem found, one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in the config:"
        super().__init__("\n  - ".join([head, *self.problems]))


@dataclass(frozen=True)
class ClassSpec:
    """A ``{kind}_class`` / ``{kind}_parameters`` mapping split into its parts; nothing checked yet.

    Attributes:
        class_key: ``"{kind}_class"``.
        params_key: ``"{kind}_parameters"``.
        path: The class path (or a class given in code); None when ``has_class`` is false.
        has_class: Whether the mapping has ``class_key``.
        parameters: ``params_key``'s value as written, ``{}`` when absent or null (maybe not a mapping).
        unknown: The mapping's other keys, in its order.
    """

    class_key: str
    params_key: str
    path: Any
    has_class: bool
    parameters: Any
    unknown: list[Any]


def spec_keys(kind: str) -> tuple[str, str]:
    """``("{kind}_class", "{kind}_parameters")`` for a kind such as ``"model"`` or ``"optimizer"``."""
    return f"{kind}_class", f"{kind}_parameters"


def read_spec(mapping: Mapping[str, Any], kind: str) -> ClassSpec:
    """Split a ``{kind}_class`` / ``{kind}_parameters`` mapping (the caller has checked it is one).

    Args:
        mapping: The spec, e.g. ``{"optimizer_class": "torch.optim.AdamW", "optimizer_parameters": {...}}``.
        kind: The prefix of its keys.

    Returns:
        The parts; the mapping is not modified nor copied.
    """
    class_key, params_key = spec_keys(kind)
    parameters = mapping.get(params_key)
    return ClassSpec(
        class_key=class_key,
        params_key=params_key,
        path=mapping.get(class_key),
        has_class=class_key in mapping,
        parameters={} if parameters is None else parameters,
        unknown=[k for k in mapping if k not in (class_key, params_key)],
    )


def resolve_class(path: str, key: str, unmapped: Callable[[str, str], str | None] | None = None) -> type:
    """Import the class a dotted path (``"package.module.Class"``) names.

    Args:
        path: The dotted path.
        key: The config key holding it, for the error message.
        unmapped: The caller's own problem line for a path it knows no class behind (the
            experiment layer names tinybig's classes), or None to import it.

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
    if unmapped is not None and (problem := unmapped(path, key)):
        raise ConfigError([problem])
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
