"""Sharded checkpoints under FSDP2: every rank writes its own shards (``torch.distributed.checkpoint``).

A checkpoint of an FSDP2 run holds, beside the files every checkpoint holds (scheduler, sampler,
random states, the learner's progress per rank)::

    pytorch_model_fsdp_0/   the model: a DCP folder, keys ``model.<name>`` with <name> the user's
                            module's own ``state_dict`` keys (those of ``model.safetensors``)
    optimizer_0/            the optimizer: a DCP folder, keys ``optimizer.state.<name>.<slot>``
                            and ``optimizer.param_groups...``

This is what Accelerate's ``save_state`` writes with ``fsdp_state_dict_type: SHARDED_STATE_DICT``:
no rank ever gathers the full model or optimizer, and DCP reshards both on load, so a checkpoint of
P processes resumes on Q. The store saves FSDP2 checkpoints this way whatever the Accelerate config's
``fsdp_state_dict_type`` says (:func:`checkpoint_format`); the final full weights are gathered apart.

``run.checkpoint.async: true`` (:func:`stage`): the model's and optimizer's shards are copied to host
memory by DCP's ``async_save`` while the loop waits, and written by DCP's own threads, whose
collectives run on gloo groups of their own (one per folder: two writes in flight never share a group,
so their collectives never interleave with each other or with the training's). The small files
(scheduler, sampler, random states, progress) are written at the step. :class:`ShardedWrite` is the
rank's write in flight, seen by the store's background side as any background write.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .weight_files import DCP_MODEL_DIR

__all__ = ["MODEL_DIR", "OPTIMIZER_DIR", "ShardedWrite", "checkpoint_format", "fsdp2_plugin", "is_sharded_checkpoint",
           "stage"]

MODEL_DIR = DCP_MODEL_DIR  # the name its readers know it by (training/weight_files.py)
OPTIMIZER_DIR = "optimizer_0"  # Accelerate's f"{OPTIMIZER_NAME}_{optimizer index}"
_WRITERS: dict[str, Any] = {}  # the default group they belong to, the model's and optimizer's (gloo group, stager)


def fsdp2_plugin(accelerator: Any) -> Any:
    """The Accelerator's FSDP plugin when it trains under FSDP2, else None."""
    return accelerator.state.fsdp_plugin if getattr(accelerator, "is_fsdp2", False) else None


def is_sharded_checkpoint(folder: str | Path) -> bool:
    """Whether a checkpoint folder holds a sharded (DCP) model."""
    return (Path(folder) / MODEL_DIR).is_dir()


@contextmanager
def checkpoint_format(accelerator: Any, folder: str | Path | None = None) -> Iterator[None]:
    """While inside, Accelerate's ``save_state`` / ``load_state`` use sharded state dicts under FSDP2.

    Saving (``folder`` None) is always sharded; loading follows what ``folder`` holds, so a checkpoint
    written with ``FULL_STATE_DICT`` (before checkpoints were sharded) still resumes. Without FSDP2
    nothing changes. The plugin's own setting is put back on the way out (the final weights read it).
    """
    plugin = fsdp2_plugin(accelerator)
    if plugin is None:
        yield
        return
    from torch.distributed.fsdp import fully_sharded_data_parallel as fsdp

    kept = (plugin.state_dict_type, plugin.state_dict_config, plugin.optim_state_dict_config)
    # Accelerate's own defaults for each type (sharded: each rank's shard offloaded to the host).
    if folder is None or is_sharded_checkpoint(folder):
        plugin.state_dict_type = fsdp.StateDictType.SHARDED_STATE_DICT
        plugin.state_dict_config = fsdp.ShardedStateDictConfig(offload_to_cpu=True)
        plugin.optim_state_dict_config = fsdp.ShardedOptimStateDictConfig(offload_to_cpu=True)
    else:
        plugin.state_dict_type = fsdp.StateDictType.FULL_STATE_DICT
        plugin.state_dict_config = fsdp.FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
        plugin.optim_state_dict_config = fsdp.FullOptimStateDictConfig(offload_to_cpu=True, rank0_only=True)
    try:
        yield
    finally:
        plugin.state_dict_type, plugin.state_dict_config, plugin.optim_state_dict_config = kept


class ShardedWrite:
    """One rank's DCP writes in flight (DCP's futures), with :class:`~distlearn.training.async_save.BackgroundWrite`'s
    interface: :meth:`finished`, :meth:`written`, :meth:`wait` and ``error``.

    DCP's coordinator writes a folder's ``.metadata`` after every rank's shards are written, and each
    rank's future resolves only then: every rank's futures resolved means every rank's shards are on disk.
    """

    def __init__(self, futures: list[Future]) -> None:
        self._futures = futures
        self.error: BaseException | None = None

    def finished(self) -> bool:
        """Whether every write has ended (well or not), without waiting."""
        return all(f.done() for f in self._futures)

    def written(self) -> bool:
        """Whether every write has ended well."""
        return self.finished() and all(f.exception() is None for f in self._futures)

    def wait(self) -> BaseException | None:
        """Wait for every write to end; the first error, or None."""
        for future in self._futures:
            try:
                future.result()
            except BaseException as exc:  # told to every rank by the store, at the commit
                self.error = self.error or exc
        return self.error


def _writers() -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """(gloo group, stager) for the model's and the optimizer's writes, made once per process group (a
    collective: every rank makes them at the same save). The stagers keep their host buffers from one save
    to the next (copying into mapped memory costs a fraction of a fresh copy); the store never stages
    while a write is in flight. Pinned buffers and non-blocking copies where there is a GPU."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

    if _WRITERS.get("world") is not dist.group.WORLD:  # the first save, or a process group started again
        gpu = torch.cuda.is_available()
        options = StagingOptions(use_pinned_memory=gpu, use_shared_memory=False, use_async_staging=False,
                                 use_non_blocking_copy=gpu)
        writers = tuple((dist.new_group(backend="gloo"), DefaultStager(options)) for _ in range(2))
        _WRITERS.update(world=dist.group.WORLD, writers=writers)
    return _WRITERS["writers"]


def _save_async(state: dict[str, Any], folder: Path, writer: tuple[Any, Any]) -> Future:
    """DCP's ``async_save`` of ``state`` into ``folder`` with ``writer``'s (group, stager): staged to host
    memory now, written in DCP's thread."""
    import torch.distributed.checkpoint as dcp

    folder.mkdir(parents=True, exist_ok=True)
    group, stager = writer
    response = dcp.async_save(state, storage_writer=dcp.FileSystemWriter(str(folder), sync_files=True),
                              process_group=group, async_stager=stager)
    return getattr(response, "upload_completion", response)  # a Future, or torch's newer AsyncSaveResponse


def stage(accelerator: Any, tmp: Path, learner_state: Mapping[str, Any]) -> ShardedWrite:
    """Start writing this rank's FSDP2 checkpoint into ``tmp`` in the background (every rank calls it).

    The small files are written now, as ``save_state`` writes them; the model's and optimizer's shards are
    staged to host memory (the loop's only wait for them) and written by DCP's threads.
    """
    from accelerate.checkpointing import save_accelerator_state
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    rank, (model_writer, optimizer_writer) = accelerator.process_index, _writers()
    tmp.mkdir(parents=True, exist_ok=True)
    scaler = accelerator.scaler
    save_accelerator_state(str(tmp), [], [], accelerator._schedulers, accelerator._dataloaders, rank,
                           accelerator.step, scaler, save_on_each_node=accelerator.project_configuration.save_on_each_node,
                           safe_serialization=True)
    torch.save(dict(learner_state), tmp / f"learner_state_{rank}.pt")
    options = StateDictOptions(full_state_dict=False, cpu_offload=False)  # the staging copies to the host once
    model, optimizer = accelerator._models[0], accelerator._optimizers[0]
    futures = [_save_async({"model": get_model_state_dict(model, options=options)}, tmp / MODEL_DIR, model_writer),
               _save_async({"optimizer": get_optimizer_state_dict(model, _plain(optimizer), options=options)},
                           tmp / OPTIMIZER_DIR, optimizer_writer)]
    return ShardedWrite(futures)


def _plain(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer under Accelerate's wrappers (torch's state-dict helpers step a bare one)."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer
