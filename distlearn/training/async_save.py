"""Asynchronous checkpoint writes on the DDP path (``run.checkpoint.async: true``).

The loop is blocked only while the state is staged: every tensor of the model, optimizer,
scheduler, grad scaler and the learner's progress is copied to host memory, and the random
states are read, at the step the checkpoint belongs to. A background thread then writes the
same files :meth:`accelerate.Accelerator.save_state` writes (through Accelerate's own
``save_accelerator_state``, from the staged copies) into the checkpoint's hidden folder.

The thread runs no collective. Committing (the marker, the rename, pruning) is the store's
(:class:`~distlearn.training.checkpoint.Checkpoints`): once every rank's write has finished,
which the ranks learn in the collective they run anyway at a display step (a flag beside the
stop flags), or at the next save, which waits for the write in flight first. A kill while a
write runs leaves a hidden folder without a marker: the previous checkpoint stays the newest.

FSDP, DeepSpeed and Megatron save through collectives of their own, and custom objects, save
hooks, iterable-dataset shards and stateful loaders hold live state the staging cannot copy: there
:func:`unsupported` says why, and the store saves synchronously.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["BackgroundWrite", "stage", "to_host", "unsupported"]


class _Frozen:
    """A staged ``state_dict()`` standing in for the live object it was read from."""

    def __init__(self, state: Any) -> None:
        self._state = state

    def state_dict(self) -> Any:
        return self._state


def to_host(obj: Any, memo: dict[int, torch.Tensor] | None = None) -> Any:
    """A copy of ``obj`` whose tensors are fresh host-memory copies (containers rebuilt, other values as they are).

    A tensor met twice (tied weights) is copied once, so the copies stay tied as the originals were.
    """
    memo = {} if memo is None else memo
    if isinstance(obj, torch.Tensor):
        if id(obj) not in memo:
            memo[id(obj)] = obj.detach().to("cpu", copy=True)
        return memo[id(obj)]
    if isinstance(obj, dict):
        return type(obj)((k, to_host(v, memo)) for k, v in obj.items())
    if isinstance(obj, Mapping):
        return {k: to_host(v, memo) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple
        return type(obj)(*(to_host(v, memo) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_host(v, memo) for v in obj)
    return obj


def unsupported(accelerator: Any) -> str | None:
    """Why this Accelerator's state cannot be written in the background (None: it can)."""
    from accelerate.data_loader import IterableDatasetShard
    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED,
                                        DistributedType.MEGATRON_LM, DistributedType.XLA):
        return f"{accelerator.distributed_type} saves through collectives of its own"
    if accelerator._custom_objects or accelerator._save_model_state_pre_hook:
        return "custom objects or save hooks are registered with the Accelerator"
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


def stage(accelerator: Any, tmp: Path, learner_state: Mapping[str, Any]) -> BackgroundWrite:
    """Copy this rank's state to host memory and start writing it into ``tmp`` (which this creates).

    The random states are written now (a small file, read at this step); everything else by the thread.
    """
    from accelerate.checkpointing import save_accelerator_state

    rank = accelerator.process_index
    rng = tmp / f".rng-{rank}"
    rng.mkdir(parents=True, exist_ok=True)
    save_accelerator_state(str(rng), [], [], [], [], rank, accelerator.step)  # the random states only, read now
    weights = [to_host(accelerator.get_state_dict(model, unwrap=False)) for model in accelerator._models]
    optimizers = [_Frozen(to_host(opt.state_dict())) for opt in accelerator._optimizers]
    schedulers = [_Frozen(to_host(s.state_dict())) for s in accelerator._schedulers]
    scaler = _Frozen(to_host(accelerator.scaler.state_dict())) if accelerator.scaler is not None else None
    job = (tmp, weights, optimizers, schedulers, list(accelerator._dataloaders), rank, accelerator.step, scaler,
           accelerator.project_configuration.save_on_each_node, to_host(dict(learner_state)))
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
    own = tmp / f"learner_state_{rank}.pt"
    torch.save(learner_state, own)
    with open(own, "rb") as f:
        os.fsync(f.fileno())
