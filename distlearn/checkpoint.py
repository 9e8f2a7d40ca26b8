"""Checkpoints: saving, finding and loading them, atomically for the whole set of files.

A checkpoint is a folder ``<output_dir>/checkpoints/step-<optimizer step, 8 digits>``::

    step-00000120/
        model.safetensors, optimizer.bin, scheduler.bin, sampler.bin, random_states_<rank>.pkl
                           what ``accelerator.save_state`` writes (model, optimizer, scheduler,
                           grad scaler, every rank's RNG)
        learner_state_<rank>.pt
                           the learner's progress on that rank (epoch, optimizer step, position
                           in the epoch, the epoch's partial loss and metric states, the record
                           so far, the RNG states, what the caller adds such as the W&B run id)
        COMMITTED.json     the commit marker: what the checkpoint is and the size of every file

Saving is atomic for the whole set: every rank writes into a hidden temporary
folder, all ranks meet, then the main process writes the marker (through a
temporary name, flushed to disk) and renames the folder into place. A kill at
any moment leaves the previous checkpoint usable: a folder without its marker,
or whose files do not match it, is never loaded. Finding skips such a folder
with a warning naming it and why, and falls back to the one before.

The folders are named by the global optimizer step, so the numbering continues
across resumes and never collides with Accelerate's own automatic naming.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError", "Checkpoints", "Interrupted", "MARKER", "STOP_SIGNALS", "check", "find", "latest", "load_progress",
]

logger = logging.getLogger(__name__)

MARKER = "COMMITTED.json"
FOLDER = "checkpoints"
_NAME = re.compile(r"^step-(\d{8,})$")
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: no commit marker, missing or truncated files, another launch."""


# The signals that stop a run with a checkpoint: SLURM's and a launcher's SIGTERM, Ctrl-C, and the
# SIGUSR1 that `sbatch --signal=USR1@N` sends N seconds before the time limit. Their order is the
# order of the stop flags the ranks exchange.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name)
)


class Interrupted(Exception):
    """Training stopped on a signal, on every rank, after saving a checkpoint.

    Attributes:
        signum: The signal (the first one any rank received).
        record: The training record so far (the finished epochs).
        checkpoint: The checkpoint saved on the way out (None without checkpoints).
    """

    def __init__(self, signum: int, record: dict[str, Any], checkpoint: Path | None) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum, self.record, self.checkpoint = signum, record, checkpoint


def checkpoint_dir(output_dir: str | Path) -> Path:
    """Where a run's checkpoints live: ``<output_dir>/checkpoints``."""
    return Path(output_dir) / FOLDER


def check(path: str | Path) -> dict[str, Any]:
    """The commit marker of a complete checkpoint folder.

    Args:
        path: A checkpoint folder.

    Returns:
        The marker's content (``name``, ``epoch``, ``step``, ``batches_done``, ``world_size``,
        ``config``, ``files``, ...).

    Raises:
        CheckpointError: the folder, its marker or a file the marker lists is missing, unreadable
            or of another size than when it was written.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder")
    marker = path / MARKER
    if not marker.is_file():
        raise CheckpointError(f"no commit marker {MARKER} (the save did not finish)")
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"unreadable commit marker {MARKER}: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict) or "step" not in meta:
        raise CheckpointError(f"commit marker {MARKER} lacks 'files' or 'step'")
    for name, size in meta["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"file {name} is missing")
        if file.stat().st_size != size:
            raise CheckpointError(f"file {name} has {file.stat().st_size} bytes, {size} when saved")
    return meta


def find(output_dir: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """The complete checkpoints of a run, newest first; incomplete ones are skipped with a warning.

    Args:
        output_dir: The run's output folder (its ``checkpoints/`` folder is searched).

    Returns:
        ``(folder, marker)`` pairs ordered by optimizer step, the newest first.
    """
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    numbered = sorted(
        ((int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name))), key=lambda x: x[0], reverse=True
    )
    found = []
    for _, path in numbered:
        try:
            found.append((path, check(path)))
        except CheckpointError as exc:
            logger.warning("skipping checkpoint %s: %s", path, exc)
    return found


def latest(output_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete checkpoint of a run, or None when there is none."""
    found = find(output_dir)
    return found[0] if found else None


def load_progress(path: str | Path, rank: int) -> dict[str, Any]:
    """One rank's learner progress saved in a checkpoint (see :meth:`Checkpoints.save`)."""
    # Our own file, written by this library: it holds RNG states (numpy arrays), hence weights_only=False.
    return torch.load(Path(path) / f"learner_state_{rank}.pt", map_location="cpu", weights_only=False)


@dataclass
class Checkpoints:
    """A run's checkpoint policy and store: what the learner's loop calls.

    Args:
        output_dir: The run's folder; checkpoints go to ``<output_dir>/checkpoints``.
        every_n_steps: Save every this many optimizer steps (besides every epoch's end);
            None: at epoch ends only.
        keep_last: How many complete checkpoints to keep (>= 1). The newest complete one is
            deleted only after a newer one is committed.
        resume_from: A checkpoint folder the next ``train()`` continues from (None: start fresh).
        meta: More JSON values for the commit marker (e.g. the resolved config, compared on resume).
        extra: Values stored with every rank's progress and given back on resume (e.g. the W&B run id).
    """

    output_dir: str | Path
    every_n_steps: int | None = None
    keep_last: int = 2
    resume_from: str | Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.every_n_steps is not None and (not isinstance(self.every_n_steps, int) or self.every_n_steps < 1):
            raise ValueError(f"every_n_steps must be an int >= 1 or None, got {self.every_n_steps!r}")
        if not isinstance(self.keep_last, int) or self.keep_last < 1:
            raise ValueError(f"keep_last must be an int >= 1, got {self.keep_last!r}")
        self.root = checkpoint_dir(self.output_dir)
        self.last_saved: Path | None = None
        self.received: int | None = None  # the first stop signal this process received

    @contextmanager
    def catch_signals(self) -> Iterator[Checkpoints]:
        """While inside, SIGTERM/SIGINT/SIGUSR1 ask training to stop with a checkpoint; a second one exits at once.

        The handler only records the signal: the learner's loop sees it at its next agreement
        point (every ``display_every_n_steps`` steps and every epoch's end), where all ranks learn
        that one of them was signalled, save a checkpoint and raise :class:`Interrupted`.
        """
        if threading.current_thread() is not threading.main_thread():  # handlers live in the main thread only
            yield self
            return

        def handler(signum: int, frame: Any) -> None:
            if self.received is not None:  # the second signal: no checkpoint, no cleanup
                os.write(2, f"distlearn: second {signal.Signals(signum).name}: exiting now\n".encode())
                os._exit(128 + signum)
            self.received = signum
            logger.warning("%s received: stopping at the next checkpoint point", signal.Signals(signum).name)

        previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
        try:
            yield self
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)

    def stop_flags(self) -> list[int]:
        """One flag per stop signal (1 for the one this process received), for the ranks to sum."""
        return [int(self.received == signum) for signum in STOP_SIGNALS]

    @staticmethod
    def agreed_signal(flags: Any) -> int | None:
        """The signal the summed flags of every rank name (the first in ``STOP_SIGNALS`` order), or None."""
        for signum, count in zip(STOP_SIGNALS, flags):
            if count:
                return signum
        return None

    def due(self, step: int) -> bool:
        """Whether optimizer step ``step`` (counted from 1) ends with a checkpoint."""
        return self.every_n_steps is not None and step % self.every_n_steps == 0

    def save(self, accelerator: Any, progress: Mapping[str, Any]) -> Path:
        """Save a checkpoint of the whole training state; every rank calls it (collectives inside).

        Args:
            accelerator: The Accelerator holding the prepared model, optimizer, scheduler, loaders.
            progress: This rank's learner progress (``step`` names the folder).

        Returns:
            The committed checkpoint folder.
        """
        began = time.time()
        name = f"step-{int(progress['step']):08d}"
        final, tmp = self.root / name, self.root / f".tmp-{name}"
        if accelerator.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(".tmp-*"):  # left by a save that was killed
                shutil.rmtree(stale, ignore_errors=True)
        accelerator.wait_for_everyone()  # nobody writes into the folder before it is cleared
        accelerator.save_state(str(tmp))
        own = tmp / f"learner_state_{accelerator.process_index}.pt"
        torch.save({**progress, "extra": dict(self.extra)}, own)
        _fsync(own)
        accelerator.wait_for_everyone()  # every rank's files are written
        if accelerator.is_main_process:
            self._commit(tmp, final, progress, accelerator.num_processes)
            self._prune(keep=final)
        accelerator.wait_for_everyone()  # the checkpoint is visible to every rank when save() returns
        self.last_saved = final
        logger.debug("checkpoint %s saved in %.2f s", final, time.time() - began)
        return final

    def load(self, accelerator: Any, path: str | Path) -> dict[str, Any]:
        """Restore the Accelerator's objects from ``path`` and return this rank's learner progress.

        Raises:
            CheckpointError: the folder is incomplete, or was written by another number of processes.
        """
        path = Path(path)
        meta = check(path)
        if meta.get("world_size") != accelerator.num_processes:
            raise CheckpointError(
                f"{path} was written by {meta.get('world_size')} processes, this launch has "
                f"{accelerator.num_processes}: resume with the same number of processes"
            )
        accelerator.load_state(str(path))
        progress = load_progress(path, accelerator.process_index)
        self.extra.update(progress.get("extra") or {})
        return progress

    # ------------------------------------------------------------------ #

    def _commit(self, tmp: Path, final: Path, progress: Mapping[str, Any], world_size: int) -> None:
        """Main process: flush the files, write the marker, rename the folder into place."""
        files = {}
        for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
            _fsync(file)
            files[str(file.relative_to(tmp))] = file.stat().st_size
        meta = {
            "format": FORMAT_VERSION,
            "name": final.name,
            "epoch": int(progress["epoch"]),
            "step": int(progress["step"]),
            "batches_done": int(progress["batches_done"]),
            "samples_done": int(progress.get("samples_done", 0)),
            "world_size": world_size,
            "time": time.time(),
            **self.meta,
            "files": files,
        }
        marker_tmp = tmp / f".{MARKER}.tmp"
        with open(marker_tmp, "w") as f:
            json.dump(meta, f, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(marker_tmp, tmp / MARKER)
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (a resumed run that was killed during a save)
            aside = self.root / f".tmp-old-{final.name}"
            os.replace(final, aside)
            os.replace(tmp, final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(self.root)

    def _prune(self, keep: Path) -> None:
        """Delete all but the newest ``keep_last`` complete checkpoints (never ``keep``, just committed)."""
        complete = [path for path, _ in find(self.output_dir) if path != keep]
        for old in complete[self.keep_last - 1:]:
            shutil.rmtree(old, ignore_errors=True)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
