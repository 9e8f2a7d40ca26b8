"""The config keys of choosing on a validation split: ``run.display_step``, ``run.checkpoint.keep_best``,
``run.early_stopping``; their check, and the :class:`~distlearn.training.selection.Selection` they make.

Their defaults live in :data:`~distlearn.experiment.defaults.RUN_DEFAULTS`; the ranges of
``early_stopping`` in :func:`~distlearn.training.selection.early_stopping_problems`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..options import is_int
from ..specs import ConfigError
from ..training.selection import VAL_SIZE_KEY, EarlyStopping, Selection, early_stopping_problems, not_one_number
from .checks import check_values
from .parameters import parameters_of, resolve_class

__all__ = ["check_selection", "selection_of"]


def check_selection(c: Mapping[str, Any], problems: list[str]) -> None:
    """Check the keys' values, and that keep_best and early stopping have a validation split to choose on."""
    run = c.get("run")
    if not isinstance(run, dict):
        return  # reported by check_run
    check_values(run, {"display_step": (lambda v: is_int(v) and v >= 1,
                                        "an int >= 1 (evaluate every this many epochs, and the last)")},
                 "run", problems)
    stopping = run.get("early_stopping")
    if stopping is not None:
        problems += [f"run.early_stopping{'.' + key if key else ''}: {problem}"
                     for key, problem in early_stopping_problems(stopping)]
    checkpoint = run.get("checkpoint")
    keep_best = checkpoint.get("keep_best", False) if isinstance(checkpoint, dict) else False
    if not isinstance(keep_best, bool):
        problems.append(f"run.checkpoint.keep_best: expected true or false, got {keep_best!r}")
    wanted = [key for key, on in (("run.checkpoint.keep_best", keep_best is True),
                                  ("run.early_stopping", stopping is not None)) if on]
    if wanted:
        _check_one_number(c, wanted, problems)
    if wanted and _val_size(c) is None:
        problems.append(
            f"{' and '.join(wanted)}: needs a validation split to choose on, but {VAL_SIZE_KEY} is not set; "
            f"set it to a fraction (e.g. 0.1) or a count of the training rows, or turn {' and '.join(wanted)} off"
        )


def selection_of(run: Mapping[str, Any], output_dir: str | Path) -> Selection:
    """The learner's ``selection=`` for a checked ``run`` section: ``best/`` in ``output_dir``."""
    stopping = run.get("early_stopping")
    keep_best = (run.get("checkpoint") or {}).get("keep_best", False)
    return Selection(keep_best=output_dir if keep_best else None,
                     early_stopping=None if stopping is None else EarlyStopping(**stopping))


def _check_one_number(c: Mapping[str, Any], wanted: list[str], problems: list[str]) -> None:
    """The primary metric (``metric_configs``, or its first entry) must give one number to choose on
    (the metric class's ``gives_scalar``); an unknown class is reported by the sections' check."""
    section, at = c.get("metric_configs"), "metric_configs"
    if isinstance(section, list) and section:
        section, at = section[0], "metric_configs[0]"
    if not isinstance(section, Mapping) or not isinstance(section.get("metric_class"), str):
        return
    try:
        cls = resolve_class(section["metric_class"], f"{at}.metric_class")
    except ConfigError:
        return
    params = section.get("metric_parameters") or {}
    default = getattr(parameters_of(cls).get("average"), "default", None)
    average = params.get("average", default) if isinstance(params, Mapping) else default
    if callable(getattr(cls, "gives_scalar", None)) and not cls.gives_scalar(average):
        got = section["metric_class"] + (f" with average {average!r}" if average == "none" else "")
        problems.append(f"{at}.metric_class: {' and '.join(wanted)}: {not_one_number(got)}")


def _val_size(c: Mapping[str, Any]) -> Any:
    data = c.get("data_configs")
    params = data.get("data_parameters") if isinstance(data, Mapping) else None
    return params.get("val_size") if isinstance(params, Mapping) else None
