"""Asynchronous checkpoint writes on the DDP path (``run.checkpoint.async: true``).

The loop is blocked only while the state is staged: every tensor of the model, optimizer,
scheduler, grad scaler and the learner's progress is copied to host memory (into buffers kept
from one save to the next, pinned for device tensors), and the random states are read, at the
step the checkpoint belongs to. A background thread then writes the same files
:meth:`accelerate.Accelerator.save_state` writes (through Accelerate's own
``save_accelerator_state``, from the staged copies) into the checkpoint's hidden folder, and
flushes them to disk.

No thread runs a collective. The commit (the store's marker, rename and pruning) starts once
every rank's write has finished: the ranks learn it in the collective they run anyway at a
display step (a flag beside the stop flags), and the main process then commits in a thread of
its own; or at the next save, a stop or the last save, which wait for what is in flight and
commit it there (one small collective to agree that every write succeeded). A kill while a
write runs leaves a hidden folder without a marker: the previous checkpoint stays the newest.

Under FSDP2 the model's and optimizer's shards go through DCP's ``async_save`` instead
(:mod:`~distlearn.training.sharded`), committed the same way. FSDP1, DeepSpeed and Megatron save
through collectives of their own, and custom objects, save hooks, iterable-dataset shards and stateful
loaders hold live state the staging cannot copy: there :func:`unsupported` says why, and the store
saves synchronously.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..runtime import ranks
from ..runtime.ranks import agree
from . import sharded

__all__ = ["BackgroundSaves", "BackgroundWrite", "Staging", "stage", "unsupported"]

logger = logging.getLogger(__name__)


class _Frozen:
    """A staged ``state_dict()`` standing in for the live object it was read from."""

    def __init__(self, state: Any) -> None:
        self._state = state

    def state_dict(self) -> Any:
        return self._state


class Staging:
    """Host-memory copies of a state, into buffers kept from one save to the next.

    Copying into memory that is already mapped costs a fraction of copying into fresh memory (whose
    pages the kernel must first fault in, the larger part of a fresh copy's time). The buffers are
    reused in the order the tensors are met, when their shape and dtype match; the store never
    stages while a write of the last staging is still in flight.
    """

    def __init__(self) -> None:
        self._buffers: list[torch.Tensor] = []
        self._used = 0
        self._memo: dict[int, torch.Tensor] = {}
        self._cuda = False

    def copy(self, *states: Any) -> list[Any]:
        """Host copies of ``states`` (containers rebuilt, tensors copied, other values as they are).

        A tensor met twice (tied weights) is copied once, so the copies stay tied as the originals were.
        """
        self._used, self._memo, self._cuda = 0, {}, False
        copies = [self._copy(state) for state in states]
        if self._cuda:
            torch.cuda.synchronize()  # the asynchronous device-to-host copies are complete before the thread reads
        return copies

    def _copy(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            if id(obj) not in self._memo:
                self._memo[id(obj)] = self._tensor(obj.detach())
            return self._memo[id(obj)]
        if isinstance(obj, dict):
            return type(obj)((k, self._copy(v)) for k, v in obj.items())
        if isinstance(obj, Mapping):
            return {k: self._copy(v) for k, v in obj.items()}
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple
            return type(obj)(*(self._copy(v) for v in obj))
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._copy(v) for v in obj)
        return obj

    def _tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        i, self._used = self._used, self._used + 1
        self._cuda = self._cuda or tensor.is_cuda
        old = self._buffers[i] if i < len(self._buffers) else None
        fits = old is not None and old.shape == tensor.shape and old.dtype == tensor.dtype
        if not fits:  # pinned for a device tensor: the device-to-host copy runs at full speed, asynchronously
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=tensor.is_cuda)
            self._buffers[i:i + 1] = [buffer]
        return self._buffers[i].copy_(tensor, non_blocking=tensor.is_cuda)


def unsupported(accelerator: Any) -> str | None:
    """Why this Accelerator's state cannot be written in the background (None: it can)."""
    from accelerate.data_loader import IterableDatasetShard
    from accelerate.utils import DistributedType

    fsdp2 = sharded.fsdp2_plugin(accelerator) is not None
    if fsdp2 and (len(accelerator._models), len(accelerator._optimizers)) != (1, 1):
        return "FSDP2 with other than one model and one optimizer"
    if not fsdp2 and accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED,
                                                      DistributedType.MEGATRON_LM, DistributedType.XLA):
        return f"{accelerator.distributed_type} saves through collectives of its own"
    if accelerator._custom_objects or accelerator._save_model_state_pre_hook:
        return "custom objects or save hooks are registered with the Accelerator"
    if fsdp2:  # the loaders' state is saved at the step (sharded.stage)
        return None
    for loader in accelerator._dataloaders:
        if isinstance(getattr(loader, "dataset", None), IterableDatasetShard) or getattr(
                loader, "use_stateful_dataloader", False):
            return "a loader's state (an iterable-dataset shard or a stateful loader) cannot be staged"
    return None


class BackgroundWrite:
    """One rank's write of one staged checkpoint, in a daemon thread (a kill ends it with the process)."""

    def __init__(self, target: Any, *args: Any) -> None:
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(target, *args), name="distlearn-checkpoint",
                                        daemon=True)
        self._thread.start()

    def _run(self, target: Any, *args: Any) -> None:
        try:
            target(*args)
        except BaseException as exc:  # told to every rank by the store, at the commit
            self.error = exc

    def finished(self) -> bool:
        """Whether the write has ended (well or not), without waiting."""
        return not self._thread.is_alive()

    def written(self) -> bool:
        """Whether the write has ended well."""
        return self.finished() and self.error is None

    def wait(self) -> BaseException | None:
        """Wait for the write to end; its error, or None."""
        self._thread.join()
        return self.error


def stage(accelerator: Any, tmp: Path, learner_state: Mapping[str, Any], staging: Staging) -> BackgroundWrite:
    """Copy this rank's state to host memory (into ``staging``'s buffers) and start writing it into ``tmp``
    (which this creates). The random states are written now (a small file, read at this step); the rest by
    the thread."""
    from accelerate.checkpointing import save_accelerator_state

    rank = accelerator.process_index
    rng = tmp / f".rng-{rank}"
    rng.mkdir(parents=True, exist_ok=True)
    save_accelerator_state(str(rng), [], [], [], [], rank, accelerator.step)  # the random states only, read now
    scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
    weights, optimizers, schedulers, scaler, progress = staging.copy(
        [accelerator.get_state_dict(model, unwrap=False) for model in accelerator._models],
        [opt.state_dict() for opt in accelerator._optimizers], [s.state_dict() for s in accelerator._schedulers],
        scaler, dict(learner_state))
    job = (tmp, weights, [_Frozen(s) for s in optimizers], [_Frozen(s) for s in schedulers],
           list(accelerator._dataloaders), rank, accelerator.step, None if scaler is None else _Frozen(scaler),
           accelerator.project_configuration.save_on_each_node, progress)
    return BackgroundWrite(_write, *job)


def _write(tmp: Path, weights: list, optimizers: list, schedulers: list, loaders: list, rank: int, step: int,
           scaler: Any, on_each_node: bool, learner_state: dict[str, Any]) -> None:
    """The thread: Accelerate's files from the staged copies, the staged random states, this rank's progress."""
    from accelerate.checkpointing import save_accelerator_state

    # The loaders of the supported path save nothing of their own (see unsupported()).
    save_accelerator_state(str(tmp), weights, optimizers, schedulers, loaders, rank, step, scaler,
                           save_on_each_node=on_each_node, safe_serialization=True)
    name = f"random_states_{rank}.pkl"
    os.replace(tmp / f".rng-{rank}" / name, tmp / name)  # the states read at the step, not the thread's
    shutil.rmtree(tmp / f".rng-{rank}", ignore_errors=True)
    torch.save(learner_state, tmp / f"learner_state_{rank}.pt")
    for file in tmp.iterdir():  # on disk here, so that the commit's own flush finds nothing left to write
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())


class BackgroundSaves:
    """A store's background side: the write in flight, the commit in flight, the staging buffers.

    ``commit(tmp, final, position, world_size)`` is the store's commit and pruning (main process).
    Whether a background save is open is the same on every rank (all stage at the same step, all
    finish at the same save), so :meth:`finish` runs its collectives on every rank or on none.
    """

    def __init__(self, commit: Callable[[Path, Path, Mapping[str, Any], int], None]) -> None:
        self._commit = commit
        self.staging = Staging()
        self.pending: tuple[BackgroundWrite | sharded.ShardedWrite, Path, Path, dict[str, Any], int] | None = None
        self.committing: BackgroundWrite | None = None  # the main process's commit, started at a display step
        self.open = False  # staged and not yet through finish()
        self._said = False  # why saves stay synchronous was said once

    def usable(self, accelerator: Any) -> bool:
        """Whether this Accelerator's state can be written in the background (else said once, on the main process)."""
        why = unsupported(accelerator)
        if why is not None and not self._said and accelerator.is_main_process:
            logger.warning("run.checkpoint.async: saving synchronously: %s", why)
        self._said = self._said or why is not None
        return why is None

    def start(self, accelerator: Any, tmp: Path, final: Path, position: Mapping[str, Any],
              state: Mapping[str, Any]) -> None:
        """Stage this rank's state and start writing it (the loop is blocked only for the staging)."""
        write = (sharded.stage(accelerator, tmp, state) if sharded.fsdp2_plugin(accelerator) is not None
                 else stage(accelerator, tmp, state, self.staging))
        self.pending = (write, tmp, final, dict(position), accelerator.num_processes)
        self.open = True

    def written(self) -> bool:
        """Whether this rank's write in flight has ended well (its flag for the next display step)."""
        return self.pending is not None and self.pending[0].written()

    def commit_if_written(self, accelerator: Any, ranks_written: int) -> Path | None:
        """At a display step: when every rank's write has finished, the main process commits in a thread
        (joined by the next :meth:`finish`); no collective. Returns the checkpoint being committed, or None."""
        if self.pending is None or ranks_written != self.pending[4]:
            return None
        _, tmp, final, position, world = self.pending
        self.pending = None
        if accelerator.is_main_process:
            self.committing = BackgroundWrite(self._commit, tmp, final, position, world)
        return final

    def finish(self, accelerator: Any) -> Path | None:
        """Wait for what is in flight and commit it; every rank calls it (collectives when a save is open).

        Returns:
            The checkpoint committed here, or None.

        Raises:
            ValueError: On every rank, when a rank's write (or the main process's commit) failed.
        """
        if not self.open:
            return None
        self.open = False
        problem = None
        if self.committing is not None:
            error, self.committing = self.committing.wait(), None
            problem = None if error is None else f"committing a checkpoint failed: {error!r}"
        pending, self.pending = self.pending, None
        if pending is not None and (error := pending[0].wait()) is not None:
            problem = problem or f"writing checkpoint {pending[2].name} failed: {error!r}"
        agree(problem)  # one small collective: every rank raises, or none
        if pending is None:
            return None
        accelerator.wait_for_everyone()  # every rank's files are written
        try:  # the others wait in the outcome's broadcast: the checkpoint is visible to every rank after it
            ranks.on_main(accelerator, self._commit, *pending[1:])
        except ranks.MainProcessFailed as exc:
            raise ValueError(f"committing checkpoint {pending[2].name} failed on the main process ({exc}); the "
                             "previous checkpoint is kept") from None
        return pending[2]
