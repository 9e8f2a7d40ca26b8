"""A run's output folder: choosing it safely and writing its outputs as one set.

    runs/digits-20260101-120000/
        config.yaml        the resolved config (file + overrides + defaults, output_dir filled in)
        record.json        the learner's training record (per epoch: losses, scores, lr, times, test result)
        batches.jsonl      one line per batch: epoch, batch, loss, time (the record's batch_records)
        model.safetensors  the final weights (the unwrapped model's state dict); above 5 GB HF-style shards
                           model-0000k-of-0000n.safetensors and model.safetensors.index.json
        curves.png         loss, score and lr per epoch, train and test
        wandb/             the W&B run files when tracking is on (unless WANDB_DIR is set)

Only the main process calls the functions that touch the file system. The five files are
replaced as one set (:func:`distlearn.command.files.replace_set`): a kill while they are
written leaves the old set or a committed new one, and the next ``distlearn train`` on the
folder finishes or undoes that swap before anything reads it (:func:`recover_outputs`).
A stop signal in that window waits for the swap (:func:`signals_wait`).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from .console import logger
from ..training.selection import BEST_DIR, recover_best
from .curves import write_curves
from .files import STAGING, SWAPPING, recover_set, replace_set, split_batches, write_batches, write_config, \
    write_record
from ..training.full_weights import DEFAULT_MAX_SHARD_SIZE, WeightSource, as_source, save_full_weights

__all__ = [
    "OUTPUT_FILES",
    "OutputDirError",
    "default_output_dir",
    "prepare_output_dir",
    "recover_outputs",
    "remove_if_unused",
    "signals_wait",
    "write_outputs",
]

OUTPUT_FILES = ("config.yaml", "record.json", "batches.jsonl", "model.safetensors", "curves.png")


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
            written = {*OUTPUT_FILES, STAGING, SWAPPING, "checkpoints", "wandb", BEST_DIR}
            if not set(existing) & written:  # nothing a run writes
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


def recover_outputs(output_dir: str | Path | None) -> str | None:
    """Finish or undo the replacement of the outputs that a killed process left (main process only).

    Call it before anything reads the folder. A new set that was written whole is moved into
    place; one that was still being written is removed, leaving the old set.

    Returns:
        A line for the log saying what was done, or None (nothing was left, or no such folder).
    """
    if output_dir is None:
        return None
    path = Path(output_dir).expanduser()
    best = recover_best(path) if path.is_dir() else None  # a best/ swap a kill left (run.checkpoint.keep_best)
    outcome = recover_set(path)
    if outcome is None:
        return None if best is None else f"{path}: a process was killed while replacing best/: {best}"
    if outcome == "completed":
        return f"{path}: a process was killed while replacing the outputs; the new set was complete and is now in place"
    return f"{path}: a process was killed while writing new outputs; they were incomplete and removed, the earlier set stays"


@contextmanager
def signals_wait() -> Iterator[list[int]]:
    """While inside, SIGTERM/SIGINT/SIGUSR1 are noted, not acted on: the outputs are being written.

    Yields the list of signals received, in order; the caller stops with the first once the
    outputs are whole. A :meth:`Checkpoints.catch_signals` block inside takes over while it lasts.
    """
    from ..training.control import stop_signals_to

    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        logger.warning("%s received while the outputs are written: stopping once they are whole",
                       signal.Signals(signum).name)

    with stop_signals_to(handler):
        yield received


def write_outputs(
    output_dir: str | Path,
    config: Mapping[str, Any],
    record: Mapping[str, Any],
    state_dict: Mapping[str, Any] | WeightSource,
    higher_is_better: bool | None = True,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
) -> list[Path]:
    """Write config.yaml, record.json, batches.jsonl, model.safetensors and curves.png (main process only).

    Args:
        output_dir: The folder from :func:`prepare_output_dir`.
        config: The resolved config as a plain dict.
        record: The learner's training record; its per-batch values go to batches.jsonl, the
            rest to record.json (:func:`distlearn.command.files.read_record` joins them again).
        state_dict: The final model weights: a state dict, or a source gathered a tensor at a time
            (:func:`distlearn.training.full_weights.model_weights`; its other ranks take part meanwhile).
        higher_is_better: The metric's ``higher_is_better`` (None: no metric), for the best epoch
            that curves.png marks: the one the summary names.
        max_shard_size: Bytes above which the weights are HF-style shards with an index instead of one file.

    Returns:
        The paths written, in the order of :data:`OUTPUT_FILES`.

    The files are replaced as one set (:func:`distlearn.command.files.replace_set`): staged in a
    hidden folder, then swapped in; a kill leaves what :func:`recover_outputs` makes whole.
    """
    summary, batches = split_batches(record)
    source = as_source(state_dict)
    writers = {
        "config.yaml": lambda path: write_config(path, config),
        "record.json": lambda path: write_record(path, summary),
        "batches.jsonl": lambda path: write_batches(path, batches),
        "model.safetensors": lambda path: save_full_weights(path.parent, source, max_shard_size=max_shard_size),
        "curves.png": lambda path: write_curves(path, record, title=Path(output_dir).resolve().name,
                                                higher_is_better=higher_is_better),  # staged elsewhere
    }
    return replace_set(output_dir, {name: writers[name] for name in OUTPUT_FILES})
