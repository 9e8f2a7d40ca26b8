"""Checking a config's ``run`` section: seed, output folder, tracking, checkpoints, resuming."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..options import (
    NONFINITE_MODES,
    RESUME_BATCH_MODES,
    RESUME_MODES,
    TRACKING_BACKENDS,
    TRACKING_MODES,
    did_you_mean,
    is_int,
    is_number,
)
from ..training.settings import RUN_CHECKS
from .checks import check_keys, check_values
from .defaults import RUN_DEFAULTS

__all__ = ["check_output_folder", "check_run", "check_timed_checkpoints"]


def check_run(run: Any, problems: list[str], elsewhere: Mapping[str, Sequence[str]] | None = None) -> None:
    """Check the ``run`` section's keys and values (``elsewhere``: see :func:`check_keys`)."""
    if not isinstance(run, dict):
        problems.append(f"run: expected a mapping (seed, output_dir, overwrite, tracking, ...), got {run!r}")
        return
    check_keys(run, list(RUN_DEFAULTS), "run", problems, elsewhere)
    check_values(run, {
        "seed": (lambda v: is_int(v) and v >= 0, "an int >= 0"),
        "output_dir": (lambda v: v is None or isinstance(v, str) and v.strip(),
                       "null (a new folder under runs/) or a path string"),
        "overwrite": (lambda v: isinstance(v, bool), "true or false"),
        "tracking": (lambda v: isinstance(v, dict), "a mapping (backend, project, entity, name, mode)"),
    }, "run", problems)
    tracking = run.get("tracking")
    if isinstance(tracking, dict):
        check_keys(tracking, list(RUN_DEFAULTS["tracking"]), "run.tracking", problems)
        backend = tracking.get("backend")
        if backend not in TRACKING_BACKENDS:
            hint = " — to turn tracking off write the word none, not null" if backend is None else ""
            hint = did_you_mean(backend, TRACKING_BACKENDS) if isinstance(backend, str) else hint
            problems.append(f"run.tracking.backend: expected one of {list(TRACKING_BACKENDS)}, got {backend!r}{hint}")
        text = (lambda v: v is None or isinstance(v, str) and v.strip(), "null or a non-empty string")
        check_values(tracking, {"project": text, "entity": text, "name": text, "mode": (
            lambda v: v is None or v in TRACKING_MODES,
            f"null (offline without W&B credentials, online with) or one of {list(TRACKING_MODES)}",
        )}, "run.tracking", problems)
    check_values(run, {
        "checkpoint": (lambda v: isinstance(v, dict), "a mapping (every_n_steps, every_n_minutes, keep_last, keep_best, async)"),
        "resume": (lambda v: isinstance(v, str) and v.strip(),
                   f"one of {list(RESUME_MODES)} or the path of a checkpoint folder"),
        "timeout_s": (lambda v: is_number(v) and v > 0, "a number of seconds > 0"),
        "nonfinite": (lambda v: v in NONFINITE_MODES, f"one of {list(NONFINITE_MODES)}"),
        "resume_batch": (lambda v: v in RESUME_BATCH_MODES, f"one of {list(RESUME_BATCH_MODES)}"),
        **RUN_CHECKS,
    }, "run", problems)
    ckpt = run.get("checkpoint")
    if isinstance(ckpt, dict):
        check_keys(ckpt, list(RUN_DEFAULTS["checkpoint"]), "run.checkpoint", problems)
        check_values(ckpt, {
            "every_n_steps": (lambda v: v is None or is_int(v) and v >= 1,
                              "null (epoch ends only) or an int >= 1 (optimizer steps)"),
            "every_n_minutes": (lambda v: v is None or is_number(v) and v > 0,
                                "null (no timed checkpoints) or a number of minutes > 0"),
            "keep_last": (lambda v: is_int(v) and v >= 1, "an int >= 1"),
            "async": (lambda v: isinstance(v, bool), "true (written in the background) or false"),
        }, "run.checkpoint", problems)


def check_timed_checkpoints(run: Any, learner_configs: Any, problems: list[str]) -> None:
    """``run.checkpoint.every_n_minutes`` needs display steps: the ranks agree on the time only there."""
    ckpt = run.get("checkpoint") if isinstance(run, dict) else None
    learner_parameters = learner_configs.get("learner_parameters") if isinstance(learner_configs, dict) else None
    if not isinstance(ckpt, dict) or ckpt.get("every_n_minutes") is None or not isinstance(learner_parameters, dict):
        return
    if learner_parameters.get("display_every_n_steps") == 0:
        problems.append(
            "run.checkpoint.every_n_minutes: the time is checked at display steps, and "
            "learner_configs.learner_parameters.display_every_n_steps is 0 (none); expected an int >= 1 there "
            "(e.g. 50), or every_n_minutes: null for checkpoints at epoch ends and every_n_steps only"
        )


def check_output_folder(run: Any, problems: list[str]) -> None:
    """An output folder that cannot be written is found now, before any training (read-only checks)."""
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

