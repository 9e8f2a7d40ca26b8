"""A config section against its class: resolving the class, binding the parameters to its signature.

Parameters are bound by name (no unknown or missing ones), simple annotated types are checked
against the YAML values (:func:`matches`), and a class's own ``check_parameters(params)`` hook, if
it has one, adds its problems. Sizes left to the data (``AUTO_SIZED``) count as supplied.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from .. import specs
from ..options import did_you_mean, is_int, is_number
from .defaults import AUTO, AUTO_SIZED
from .tinybig import unmapped_problem

__all__ = ["auto_sized", "check_parameters", "parameters_of", "resolve_class"]


def resolve_class(path: str, key: str) -> type:
    """Import the class a dotted path (``"package.module.Class"``) names; see :func:`distlearn.specs.resolve_class`.

    A ``tinybig.*`` path (left by the tinybig translation: no distlearn counterpart) is named as
    tinybig's own class, with what distlearn offers instead.

    Raises:
        ConfigError: If the path names no class, with the nearest existing name.
    """
    return specs.resolve_class(path, key, unmapped=unmapped_problem)


def check_parameters(
    cls: type, params: dict, at: str, problems: list[str],
    excluded: typing.AbstractSet[str] = frozenset(),
    supplied: typing.AbstractSet[str] = frozenset(),
    flagged: typing.AbstractSet[str] = frozenset(),
    also: typing.Sequence[str] = (),
) -> None:
    """Bind ``params`` to ``cls``'s signature and report every mismatch under key ``at``.

    ``excluded``: arguments only distlearn passes (must not be in the config);
    ``supplied``: arguments filled in later (not missing when absent);
    ``flagged``: keys already reported wrong (one problem per key is enough);
    ``also``: config keys the builder maps onto a parameter (named among the accepted ones).
    """
    sig = signature(cls)
    if sig is None:  # e.g. a C extension class without a signature: nothing to check
        return
    name, flagged = f"{cls.__module__}.{cls.__qualname__}", set(flagged)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = [p.name for p in sig.parameters.values() if p.kind in kinds and p.name not in excluded] + list(also)
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
        if p is not None and key not in excluded and key not in flagged and matches(value, p.annotation) is False:
            flagged.add(key)
            problems.append(f"{at}.{key}: expected {describe(p.annotation)}, got {value!r} ({type(value).__name__})")
    hook = getattr(cls, "check_parameters", None)
    if callable(hook):
        own = {k: v for k, v in params.items() if k not in excluded and k not in flagged}
        try:
            problems.extend(f"{at}.{key}: {message}" for key, message in hook(own))
        except Exception as exc:  # a hook must not hide the other problems
            problems.append(f"{at}: {name}.check_parameters failed: {type(exc).__name__}: {exc}")


def auto_sized(cls: type, params: Mapping[str, Any], key: str) -> dict[str, tuple[str, bool]]:
    """The parameters of ``cls`` left to the data: name -> (data attribute, whether the data must
    give it: the config wrote ``auto`` or null, or the parameter has no default)."""
    null_is_auto = key == "model_configs"  # a metric's null is its own default (F1: grow as labels come)
    accepted = parameters_of(cls)
    auto = {}
    for name, attr in AUTO_SIZED[key].items():
        value = params.get(name, AUTO)
        if name in accepted and (value == AUTO or (value is None and null_is_auto)):
            auto[name] = (attr, name in params or accepted[name].default is inspect.Parameter.empty)
    return auto


def signature(cls: type) -> inspect.Signature | None:
    """``cls``'s signature with string annotations evaluated where they can be; None when it has none."""
    try:
        return inspect.signature(cls, eval_str=True)
    except Exception:  # unresolvable string annotations: check names, skip types
        try:
            return inspect.signature(cls)
        except (TypeError, ValueError):
            return None


def parameters_of(cls: type) -> Mapping[str, inspect.Parameter]:
    """``cls``'s parameters by name (empty when it has no signature)."""
    sig = signature(cls)
    return sig.parameters if sig is not None else {}


def _not_from_yaml() -> tuple[type, ...]:
    """Types a YAML value can never be (so a Union member of these types never matches)."""
    import torch

    return (torch.Tensor, torch.nn.Module, torch.optim.Optimizer)


def matches(value: Any, ann: Any) -> bool | None:
    """Whether a YAML value fits an annotation: True, False, or None when it cannot tell."""
    if ann is inspect.Parameter.empty or ann is Any or isinstance(ann, (str, typing.TypeVar)):
        return None
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Union or origin is types.UnionType:
        results = [matches(value, a) for a in args]
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
            results = [matches(v, a) for v, a in zip(value, items)]
        else:
            results = [matches(v, items[0]) for v in value]
        return False if False in results else (True if all(results) else None)
    if origin in (dict, Mapping) or ann is dict:
        return isinstance(value, dict)
    if inspect.isclass(ann) and issubclass(ann, _not_from_yaml()):
        return False
    return None


def describe(ann: Any) -> str:
    """An annotation in a config's words: ``int or null``, ``list[int]``."""
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(ann))
    if ann is None or ann is type(None):
        return "null"
    if inspect.isclass(ann) and not typing.get_args(ann):
        return ann.__name__
    return str(ann).replace("typing.", "").replace("collections.abc.", "")
