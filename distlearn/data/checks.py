"""The checks and the dotted-path lookup every data set shares (used by config validation too)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from ..options import is_int

# Parameters that every data set's loaders take (checked the same way everywhere).
LOADER_PARAMETERS = ("batch_size", "test_size", "val_size", "seed", "shuffle", "num_workers", "persistent_workers")


def check_common(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Check the loader and split parameters present in ``params``.

    Returns:
        A list of ``(parameter name, problem)``; empty when everything is valid.
    """
    problems: list[tuple[str, str]] = []
    if "batch_size" in params:
        b = params["batch_size"]
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            problems.append(("batch_size", f"expected a positive int, got {b!r}"))
    for key in ("test_size", "val_size"):
        t = params.get(key)
        if key not in params or t is None and key == "val_size":  # val_size null: no validation part
            continue
        fraction = isinstance(t, float) and 0 < t < 1
        count = is_int(t) and t >= 1
        if not (fraction or count):
            what = "a fraction of the training rows in (0, 1), a row count >= 1 or null" if key == "val_size" \
                else "a fraction in (0, 1) or a row count >= 1"
            problems.append((key, f"expected {what}, got {t!r}"))
    if "seed" in params:
        s = params["seed"]
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            problems.append(("seed", f"expected an int >= 0, got {s!r}"))
    if "num_workers" in params:
        w = params["num_workers"]
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            problems.append(("num_workers", f"expected an int >= 0 (0: no worker processes), got {w!r}"))
    for key in ("shuffle", "standardize", "stratify", "persistent_workers"):
        if key in params and not isinstance(params[key], bool):
            problems.append((key, f"expected true or false, got {params[key]!r}"))
    if params.get("persistent_workers") is True and params.get("num_workers", 0) == 0:  # torch refuses it late
        problems.append(("persistent_workers", "expected false with num_workers 0 (persistent workers need "
                                               f"num_workers >= 1), got true with num_workers {params.get('num_workers', 0)!r}"))
    return problems


def check_loader_params(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """:func:`check_common` of the loader parameters only (``LOADER_PARAMETERS``)."""
    return check_common({k: v for k, v in params.items() if k in LOADER_PARAMETERS})


def raise_first_problem(owner: str, problems: list[tuple[str, str]]) -> None:
    """Raise the first of a data set's ``check_parameters`` problems, if any.

    Raises:
        ValueError: ``"<owner>: <parameter>: <problem>"``.
    """
    if problems:
        raise ValueError(f"{owner}: {problems[0][0]}: {problems[0][1]}")


def resolve_object(path: Any, key: str) -> Any:
    """The object a dotted path names (``package.module.name``); objects pass through.

    Raises:
        ValueError: the path does not name an importable object, naming ``key``.
    """
    if not isinstance(path, str):
        return path
    module_name, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"{key}: cannot import {path!r} ({error}); give a dotted path like 'package.module.name'") \
            from None
