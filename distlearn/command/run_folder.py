"""A run's output folder: choosing it safely and writing its outputs as one set.

    runs/digits-20260101-120000/
        config.yaml        the resolved config (file + overrides + defaults, output_dir filled in)
        record.json        the learner's training record (per epoch: losses, scores, lr, times, test result)
        model.safetensors  the final weights (the unwrapped model's state dict)
        curves.png         loss, score and lr per epoch, train and test
        wandb/             the W&B run files when tracking is on (unless WANDB_DIR is set)

Only the main process calls the functions that touch the file system. Each file is
written whole or not at all (:mod:`distlearn.command.files`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from .curves import write_curves
from .files import atomic_write, write_config, write_model, write_record

__all__ = [
    "INCOMPLETE",
    "OUTPUT_FILES",
    "OutputDirError",
    "default_output_dir",
    "prepare_output_dir",
    "remove_if_unused",
    "write_outputs",
]

OUTPUT_FILES = ("config.yaml", "record.json", "model.safetensors", "curves.png")
INCOMPLETE = "OUTPUTS_INCOMPLETE"  # present only while write_outputs replaces the set


class OutputDirError(FileExistsError):
    """The output folder holds an earlier run and ``run.overwrite`` is false (or it cannot be used)."""


def default_output_dir(config_path: str | Path | None = None, now: datetime | None = None) -> Path:
    """``runs/<config name>-<YYYYmmdd-HHMMSS>``, the output folder when ``run.output_dir`` is null.

    Every process of a run must use the same folder: compute it on the main process and
    broadcast it (the clock can tick between ranks).

    Args:
        config_path: The config given on the command line (None: the default config).
        now: The time to stamp; defaults to now.
    """
    from ..experiment.config import DEFAULT_CONFIG_NAME

    name = Path(config_path).stem if config_path is not None else DEFAULT_CONFIG_NAME
    return Path("runs") / f"{name}-{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}"


def prepare_output_dir(
    output_dir: str | Path | None,
    overwrite: bool,
    config_path: str | Path | None = None,
    now: datetime | None = None,
    resumable: bool = False,
) -> Path:
    """Choose and create the run's output folder, refusing to mix with an earlier run.

    Call it on the main process only, before training, and share the result
    with the other ranks (a timestamped default differs between clocks).

    Args:
        output_dir: ``run.output_dir``; None for ``runs/<config name>-<time>`` (with
            ``-2``, ``-3``, ... appended if that folder exists already).
        overwrite: ``run.overwrite``: allow a named folder that is not empty; its
            output files are replaced, other files are left as they are.
        config_path: The config given on the command line (names the default folder).
        now: The time to stamp the default folder with (default: now).
        resumable: The run may continue an earlier one (``run.resume`` is not ``none``): a
            folder holding a complete checkpoint, or only what a run leaves before its first
            one (``checkpoints/``, ``wandb/``), is used as it is.

    Returns:
        The folder, created, as an absolute path.

    Raises:
        OutputDirError: The named folder is not empty and ``overwrite`` is false, or
            the path exists and is not a folder.
    """
    if output_dir is None:
        base = default_output_dir(config_path, now)
        path, n = base, 1
        while path.exists():  # two runs started within the same second: never share a folder
            n += 1
            path = base.with_name(f"{base.name}-{n}")
    else:
        path = Path(output_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"run.output_dir {str(path)!r} exists and is not a folder; choose another path.")
    if path.is_dir() and not overwrite:
        existing = sorted(p.name for p in path.iterdir())
        if resumable and _resumable(path, existing):
            existing = []
        if existing:
            shown = ", ".join(existing[:6]) + (", ..." if len(existing) > 6 else "")
            if not set(existing) & {*OUTPUT_FILES, INCOMPLETE, "checkpoints", "wandb"}:  # nothing a run writes
                raise OutputDirError(
                    f"run.output_dir {str(path)!r} is not empty and holds no distlearn run ({shown}). Nothing was "
                    f"changed. Choose a new or empty folder (run.output_dir=...), or write the run into it beside "
                    f"its files with run.overwrite=true."
                )
            raise OutputDirError(
                f"run.output_dir {str(path)!r} already holds an earlier run ({shown}). Nothing was changed. "
                f"Choose a new folder (run.output_dir=...) or replace its outputs with run.overwrite=true."
            )
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def _resumable(path: Path, entries: list[str]) -> bool:
    """Whether a run folder can be continued: it holds a complete checkpoint, or no output yet."""
    from ..training.checkpoint import latest

    return set(entries) <= {"checkpoints", "wandb"} or latest(path) is not None


def remove_if_unused(path: str | Path) -> None:
    """Remove a run folder that holds no file at all (left by a start that failed), else nothing."""
    path = Path(path)
    if path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def write_outputs(
    output_dir: str | Path,
    config: Mapping[str, Any],
    record: Mapping[str, Any],
    state_dict: Mapping[str, Any],
    higher_is_better: bool | None = True,
) -> list[Path]:
    """Write config.yaml, record.json, model.safetensors and curves.png (main process only).

    Args:
        output_dir: The folder from :func:`prepare_output_dir`.
        config: The resolved config as a plain dict.
        record: The learner's training record.
        state_dict: The final model weights (``accelerator.get_state_dict(model)``).
        higher_is_better: The metric's ``higher_is_better`` (None: no metric), for the best epoch
            that curves.png marks: the one the summary names.

    Returns:
        The paths written.

    The four files are replaced as one set: ``OUTPUTS_INCOMPLETE`` exists in the folder while
    they are being replaced, so a kill in between leaves a folder that says it is incomplete.
    """
    out = Path(output_dir)
    marker = out / INCOMPLETE
    atomic_write(marker, lambda tmp: tmp.write_text("the outputs are being replaced; a kill left a mix of two sets\n"))
    files = [
        write_config(out / "config.yaml", config),
        write_record(out / "record.json", record),
        write_model(out / "model.safetensors", state_dict),
        write_curves(out / "curves.png", record, higher_is_better=higher_is_better),
    ]
    marker.unlink()
    return files
