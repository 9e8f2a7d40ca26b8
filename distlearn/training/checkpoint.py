"""Checkpoints: saving, finding and loading them, atomically for the whole set of files.

A checkpoint is a folder ``<output_dir>/checkpoints/step-<optimizer step, 8 digits>``::

    step-00000120/
        model.safetensors, optimizer.bin, scheduler.bin, sampler.bin, random_states_<rank>.pkl
                           what ``accelerator.save_state`` writes (model, optimizer, scheduler,
                           grad scaler, every rank's RNG); under FSDP2 the model and optimizer are
                           the sharded folders pytorch_model_fsdp_0/ and optimizer_0/ instead, each
                           rank writing its own shards (:mod:`~distlearn.training.sharded`)
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

A checkpoint written by P processes resumes on Q (elastic resume, :func:`~distlearn.training.progress.reshard`):
the position in the epoch is a sample offset in the epoch's global order (which
depends only on the seed and the epoch), the global batch size is kept (each of
the Q processes gets ``global batch / Q`` samples per step, ``resume_batch="global"``)
so the remaining batches are exactly the samples not yet trained on; the P ranks'
partial loss and metric states are merged into Q (sums into rank 0, neutral
elsewhere; maxima on every rank); the random generators are re-derived from
(seed, epoch, optimizer step, rank), since P generator states cannot map onto Q.

The store saves and loads the learner's state dicts without reading them: the
training loop's state (:mod:`distlearn.training.progress`) says what it holds and
how it merges across process counts, and hands the store the fields of the commit
marker.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..options import DEFAULT_KEEP_LAST, DEFAULT_RESUME_BATCH, RESUME_BATCH_MODES
from ..runtime.ranks import MainProcessFailed, from_main, on_main
from .async_save import BackgroundSaves
from .control import STOP_SIGNALS, StopFlags, stop_signals_to
from .durable import fsync_dir, fsync_file
from .elastic import elastic_warning, resumed_batch
from .free_space import shortfall
from .sharded import checkpoint_format

__all__ = [
    "CheckpointError", "Checkpoints", "Interrupted", "MARKER", "RESUME_BATCH", "STOP_SIGNALS", "committed_marker",
    "elastic_warning", "find", "latest", "load_progress",
]

logger = logging.getLogger(__name__)

MARKER = "COMMITTED.json"
FOLDER = "checkpoints"
_NAME = re.compile(r"^step-(\d{8,})$")
FORMAT_VERSION = 1
# How a resume on another number of processes sizes its batches: keep the global batch (each process
# gets global / Q samples per step: the epoch's remaining batches are exactly the samples not yet seen),
# or keep the loader's per-process batch (the global batch changes; only from an epoch boundary).
RESUME_BATCH = RESUME_BATCH_MODES  # the name this module exported before options.py owned it


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: no commit marker, missing or truncated files, another launch."""


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


def committed_marker(path: str | Path) -> dict[str, Any]:
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
            found.append((path, committed_marker(path)))
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
        resume_batch: On a resume with another number of processes, keep the ``"global"`` batch
            size (default; each process gets ``global / Q`` samples) or the loader's ``"per_process"``
            batch size (the global batch changes; refused mid-epoch).
        asynchronous: Write in the background (``run.checkpoint.async``; :mod:`~distlearn.training.async_save`):
            the loop is blocked only to stage the state in host memory; the checkpoint is committed once
            every rank's write has finished (FSDP2: DCP's ``async_save``). Where that cannot be done (FSDP1,
            DeepSpeed, ...), saves stay synchronous.
        every_n_minutes: Also save once this many minutes passed since the last save (or the start),
            on the main process's clock. The ranks agree on it where they already meet, at the
            learner's display steps (``display_every_n_steps``): the save comes at the first
            optimizer step from there. None: no timed checkpoints.
    """

    output_dir: str | Path
    every_n_steps: int | None = None
    keep_last: int = DEFAULT_KEEP_LAST
    resume_from: str | Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    resume_batch: str = DEFAULT_RESUME_BATCH
    every_n_minutes: float | None = None
    asynchronous: bool = False

    def __post_init__(self) -> None:
        if self.resume_batch not in RESUME_BATCH:
            raise ValueError(f"resume_batch must be one of {RESUME_BATCH}, got {self.resume_batch!r}")
        if self.every_n_steps is not None and (not isinstance(self.every_n_steps, int) or self.every_n_steps < 1):
            raise ValueError(f"every_n_steps must be an int >= 1 or None, got {self.every_n_steps!r}")
        if not isinstance(self.keep_last, int) or self.keep_last < 1:
            raise ValueError(f"keep_last must be an int >= 1, got {self.keep_last!r}")
        minutes = self.every_n_minutes
        if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0):
            raise ValueError(f"every_n_minutes must be a number > 0 or None, got {minutes!r}")
        self.time_due = False  # every rank agreed that a timed checkpoint is due (see stop_flags)
        self._since = time.monotonic()  # the last save (or the start), on this process's clock
        self._background = BackgroundSaves(self._commit_and_prune)  # asynchronous: what is in flight
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
        def handler(signum: int, frame: Any) -> None:
            if self.received is not None:  # the second signal: no checkpoint, no cleanup
                os.write(2, f"distlearn: second {signal.Signals(signum).name}: exiting now\n".encode())
                os._exit(128 + signum)
            self.received = signum
            logger.warning("%s received: stopping at the next checkpoint point", signal.Signals(signum).name)

        with stop_signals_to(handler):
            yield self

    def stop_flags(self, main: bool = False) -> StopFlags:
        """This process's stop flags (1 for the signal it received), for the ranks to sum; on the
        ``main`` process also its vote that ``every_n_minutes`` have passed since the last save."""
        return StopFlags.received(self.received, main and self.time_is_up(), self._background.written())

    def agreed(self, summed: list[int], accelerator: Any) -> None:
        """What the ranks agreed at a display step (every rank calls it with the same flags): latch a
        timed checkpoint that is due, and commit a background write once every rank's has finished."""
        if StopFlags.time_is_up(summed):
            self.time_due = True
        committing = self._background.commit_if_written(accelerator, StopFlags.written_in(summed))
        self.last_saved = committing or self.last_saved

    def time_is_up(self) -> bool:
        """Whether ``every_n_minutes`` have passed on this process's clock since the last save (or the start)."""
        return self.every_n_minutes is not None and time.monotonic() - self._since >= 60 * self.every_n_minutes

    def due(self, step: int) -> bool:
        """Whether optimizer step ``step`` (counted from 1) ends with a checkpoint: every ``every_n_steps``,
        or when the ranks agreed that a timed one is due (:attr:`time_due`)."""
        return self.time_due or self.every_n_steps is not None and step % self.every_n_steps == 0

    def save(self, accelerator: Any, state: Mapping[str, Any], position: Mapping[str, Any], wait: bool = False) -> Path:
        """Save a checkpoint of the whole training state; every rank calls it (collectives inside).

        A background write still in flight (``asynchronous``) is waited for and committed first.

        Args:
            accelerator: The Accelerator holding the prepared model, optimizer, scheduler, loaders.
            state: This rank's learner state, saved as it is (with ``extra``) to ``learner_state_<rank>.pt``.
            position: What the commit marker says of it: ``step`` (names the folder), ``epoch``,
                ``batches_done`` and optionally ``samples_done`` and ``global_batch``.
            wait: With ``asynchronous``, return only once this checkpoint is committed (a stop, the last save).

        Returns:
            The committed checkpoint folder; when the disk is short of room for it (see
            :mod:`~distlearn.training.free_space`), nothing is saved and the newest complete one is returned.
        """
        began = time.time()
        self.finish(accelerator)
        name = f"step-{int(position['step']):08d}"
        final, tmp = self.root / name, self.root / f".tmp-{name}"
        kept = self._clear_and_check_room(accelerator, name)
        self.time_due, self._since = False, time.monotonic()  # the timed checkpoints count from here
        if kept is not None:  # too little room: skipped on every rank, the previous checkpoint stays
            return kept
        if self.asynchronous and self._background.usable(accelerator):
            self._background.start(accelerator, tmp, final, position, {**state, "extra": dict(self.extra)})
            if wait:
                self.finish(accelerator)
            return final
        with checkpoint_format(accelerator):  # FSDP2: every rank writes its own shards
            accelerator.save_state(str(tmp))
        own = tmp / f"learner_state_{accelerator.process_index}.pt"
        torch.save({**state, "extra": dict(self.extra)}, own)
        fsync_file(own)
        accelerator.wait_for_everyone()  # every rank's files are written
        # The others wait in the outcome's broadcast: the checkpoint is visible to every rank when save()
        # returns, and a commit that fails on the main process fails every rank with its cause.
        _committed_on_main(accelerator, self._commit_and_prune, tmp, final, position, accelerator.num_processes)
        self.last_saved = final
        logger.debug("checkpoint %s saved in %.2f s", final, time.time() - began)
        return final

    def finish(self, accelerator: Any) -> None:
        """Wait for the background write (and commit) in flight, if any, and commit it; every rank calls it.

        Raises:
            CheckpointError: On every rank, when a rank's write failed (its checkpoint is not committed).
        """
        try:
            committed = self._background.finish(accelerator)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
        self.last_saved = committed or self.last_saved

    def _commit_and_prune(self, tmp: Path, final: Path, position: Mapping[str, Any], world_size: int) -> None:
        """Main process: commit a background write (every rank's files are written) and prune (in a thread
        when committed at a display step)."""
        self._commit(tmp, final, position, world_size)
        self._prune(keep=final)

    def _clear_and_check_room(self, accelerator: Any, name: str) -> Path | None:
        """Before a save: the main process clears what a killed save left and checks the free space
        (:func:`~distlearn.training.free_space.shortfall`); every rank follows, and nobody writes
        before the folder is cleared. Returns the checkpoint kept when there is no room, else None."""
        room: list[Any] = [None]  # (the warning, the checkpoint kept) when short of room
        if accelerator.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(".tmp-*"):  # left by a save that was killed
                shutil.rmtree(stale, ignore_errors=True)
            last = latest(self.output_dir)
            short = shortfall(self.root, last, name)
            if short:
                logger.warning("%s", short)
                room = [(short, str(last[0]))]
        room = from_main(accelerator, room)  # a collective: every rank saves, or every rank skips
        return None if room[0] is None else Path(room[0][1])

    def per_process_batch(self, world_size: int, current: int | None) -> int | None:
        """The per-process batch size a resume from ``resume_from`` on ``world_size`` processes trains with.

        Args:
            world_size: The processes of this launch.
            current: The training loader's per-process batch size.

        Returns:
            ``current`` on the same number of processes (or without a checkpoint), else the saved
            global batch divided by ``world_size`` (``resume_batch="global"``) or ``current``
            (``"per_process"``).

        Raises:
            CheckpointError: the global batch does not split over ``world_size`` processes, or
                ``"per_process"`` would change the global batch in the middle of an epoch.
        """
        if self.resume_from is None:
            return current
        size, refusal = resumed_batch(committed_marker(self.resume_from), self.resume_from, self.resume_batch,
                                      world_size, current)
        if refusal is not None:
            raise CheckpointError(refusal)
        return size

    def load(self, accelerator: Any, path: str | Path,
             merge: Callable[[list[dict[str, Any]], int, int], dict[str, Any]] | None = None,
             n_samples: int | None = None, drop_last: bool = False) -> dict[str, Any]:
        """Restore the Accelerator's objects from ``path`` and return this rank's learner state.

        On another number of processes than the checkpoint's, ``merge(every saved rank's state,
        rank, world_size)`` gives this rank's (the learner's :func:`~distlearn.training.progress.reshard`).
        ``n_samples`` (the training samples per epoch, None if unknown) and ``drop_last`` (the
        loader's) only tell the warning how close the weights stay to an uninterrupted run's.

        Raises:
            CheckpointError: the folder is incomplete, a rank's state file is missing, or the
                process count changed and there is no ``merge``.
        """
        path = Path(path)
        meta = committed_marker(path)
        saved_world, world, rank = int(meta.get("world_size") or 1), accelerator.num_processes, accelerator.process_index
        # Accelerate loads the random states of random_states_<rank>.pkl: another rank's on fewer
        # processes, none on more (silently). Both are replaced below when the world size changed.
        with checkpoint_format(accelerator, path):  # FSDP2: DCP reshards on load
            accelerator.load_state(str(path))
        if saved_world == world:
            progress = load_progress(path, rank)
        else:
            if merge is None:
                raise CheckpointError(f"{path} was saved by {saved_world} processes, not {world}, and cannot be merged")
            try:
                progress = merge([load_progress(path, r) for r in range(saved_world)], rank, world)
            except FileNotFoundError as exc:
                raise CheckpointError(f"{path}: a rank's progress is missing: {exc}") from None
            accelerator.step = _accelerate_step(path)  # the accumulation counter, the same on every rank
            if accelerator.is_main_process:
                logger.warning("%s", elastic_warning(path, saved_world, world, meta.get("global_batch"),
                                                     n_samples, drop_last))
        # A value saved as None (e.g. no W&B run yet, when tracking is turned on at resume) keeps this run's own.
        saved = progress.get("extra") or {}
        self.extra.update({k: v for k, v in saved.items() if v is not None or self.extra.get(k) is None})
        return progress

    def _commit(self, tmp: Path, final: Path, position: Mapping[str, Any], world_size: int) -> None:
        """Main process: flush the files, write the marker, rename the folder into place."""
        files = {}
        for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
            fsync_file(file)
            files[str(file.relative_to(tmp))] = file.stat().st_size
        meta = {
            "format": FORMAT_VERSION,
            "name": final.name,
            "epoch": int(position["epoch"]),
            "step": int(position["step"]),
            "batches_done": int(position["batches_done"]),
            "samples_done": int(position.get("samples_done", 0)),
            "global_batch": int(position.get("global_batch", 0)),
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
        fsync_dir(tmp)
        if final.exists():  # the same step saved again (a resumed run that was killed during a save)
            aside = self.root / f".tmp-old-{final.name}"
            os.replace(final, aside)
            os.replace(tmp, final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(self.root)

    def _prune(self, keep: Path) -> None:
        """Delete all but the newest ``keep_last`` complete checkpoints (never ``keep``, just committed)."""
        complete = [path for path, _ in find(self.output_dir) if path != keep]
        for old in complete[self.keep_last - 1:]:
            shutil.rmtree(old, ignore_errors=True)


def _committed_on_main(accelerator: Any, commit: Callable[..., None], tmp: Path, final: Path, *args: Any) -> None:
    """``commit(tmp, final, *args)`` on the main process; its failure raised on every rank.

    Raises:
        CheckpointError: On every rank, naming the checkpoint and the main process's error.
    """
    try:
        on_main(accelerator, commit, tmp, final, *args)
    except MainProcessFailed as exc:
        raise CheckpointError(f"committing checkpoint {final.name} failed on the main process ({exc}); the "
                              "previous checkpoint is kept") from None


def _accelerate_step(path: Path) -> int:
    """Accelerate's gradient-accumulation counter saved with rank 0's random states (0 if absent)."""
    try:
        states = torch.load(path / "random_states_0.pkl", map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, ValueError):
        return 0
    return int(states.get("step", 0)) if isinstance(states, dict) else 0
