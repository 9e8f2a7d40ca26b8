"""What ``train()`` and ``test()`` check and prepare before their loops: loaders, devices, Accelerate's lists.

The learner's objects live in Accelerate's lists of prepared objects (``save_state``
saves every entry); :func:`registered_models` and :func:`unregister` are the only
places that touch those lists, through :func:`_prepared_lists`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import logging

import torch
from accelerate import Accelerator

from .batches import agree_on_batch

__all__ = [
    "check_device", "check_loader", "n_samples", "registered_models", "resolved_device", "resume_loader", "split_loaders", "unregister",
    "with_batch_size",
]

logger = logging.getLogger(__name__)


def _prepared_lists(accelerator: Accelerator) -> dict[str, list]:
    """Accelerate's private lists of what ``prepare`` registered, by kind ("model", "optimizer", "scheduler").

    Private: Accelerate has no public way to list or unregister prepared objects, and the learner
    needs both (the FSDP wrapper of a model to evaluate, and forgetting its previous train()'s
    optimizer and scheduler, which ``save_state`` would otherwise save next to the new ones).
    """
    return {"model": accelerator._models, "optimizer": accelerator._optimizers, "scheduler": accelerator._schedulers}


def registered_models(accelerator: Accelerator) -> list:
    """The models prepared on ``accelerator`` (wrapped for DDP/FSDP), in the order prepared."""
    return list(_prepared_lists(accelerator)["model"])


def unregister(accelerator: Accelerator, prepared: Mapping[str, Any]) -> None:
    """Drop ``prepared`` (kind -> object, as :func:`_prepared_lists` names kinds) from the Accelerator.

    Only these objects go (by identity): a user's Accelerator may hold others.
    """
    lists = _prepared_lists(accelerator)
    for kind, old in prepared.items():
        items = lists.get(kind)
        if old is not None and isinstance(items, list):
            items[:] = [item for item in items if item is not old]  # in place: schedulers hold the list


def n_samples(loader: Any) -> int | None:
    """The samples one epoch of a training loader draws (its sampler's length), or None if it cannot say."""
    if not isinstance(loader, torch.utils.data.DataLoader) or loader.batch_size is None:
        return None  # a batch_sampler: its batches need not be the sampler's samples in order
    try:
        return len(loader.sampler)
    except TypeError:  # an iterable dataset or a sampler without a length
        return None


def resume_loader(loader: torch.utils.data.DataLoader, checkpoints: Any, world: int) -> torch.utils.data.DataLoader:
    """The training loader to resume ``checkpoints.resume_from`` with on ``world`` processes.

    On another number of processes, one that keeps the global batch: the epoch's global sample
    order depends only on (seed, epoch), and step k of Q processes with ``global / Q`` samples each
    covers the same samples as step k of the P processes that saved the checkpoint, so skipping the
    saved number of batches skips exactly the samples trained on.
    """
    size = checkpoints.per_process_batch(world, loader.batch_size)
    if size == loader.batch_size:
        return loader
    logger.info("elastic resume: per-process batch %d -> %d (global batch kept)", loader.batch_size, size)
    return with_batch_size(loader, size)


def with_batch_size(loader: torch.utils.data.DataLoader, batch_size: int) -> torch.utils.data.DataLoader:
    """A copy of ``loader`` with another batch size: the same dataset, sampler, collation and workers."""
    extra = {"prefetch_factor": loader.prefetch_factor} if loader.num_workers else {}
    return torch.utils.data.DataLoader(
        loader.dataset, batch_size=batch_size, sampler=loader.sampler, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
        timeout=loader.timeout, worker_init_fn=loader.worker_init_fn, generator=loader.generator,
        persistent_workers=loader.persistent_workers, **extra,
    )


def check_loader(name: str, raw: Any, prepared: Any) -> None:
    """Raise on every rank if this rank's loader gives no batch.

    Only a rank with a problem calls the collective here; the others meet it
    in the check of their first batch (``BatchRunner.problem``), so a healthy run pays
    one collective for both checks.
    """
    problem = _loader_problem(name, raw, prepared)
    if problem is not None:
        agree_on_batch(problem)


def _loader_problem(name: str, raw: Any, prepared: Any) -> str | None:
    if len(raw) == 0:
        return f"{name} is empty (0 batches): it needs at least one sample"
    if len(prepared) == 0:
        return (
            f"{name} gives no batch to each process ({len(raw)} batches, drop_last=True, "
            "fewer samples than one global batch): lower the batch size or set drop_last=False"
        )
    return None


def check_device(accelerator: Accelerator, device: str | torch.device | None) -> None:
    """Raise ValueError when a single process's Accelerator runs on another device than ``device``."""
    if device is not None and accelerator.num_processes == 1:
        wanted, have = resolved_device(device), resolved_device(accelerator.device)
        if wanted != have:  # "cuda" and "cuda:0" are one device when cuda:0 is the current one
            raise ValueError(f"device={str(device)!r} but this learner's Accelerator runs on {have}")


def resolved_device(device: str | torch.device) -> torch.device:
    """A device with its index: a bare "cuda" is the current CUDA device, a bare "cpu" is cpu:0."""
    device = torch.device(device)
    if device.index is not None:
        return device
    backend = getattr(torch, device.type, None)
    index = backend.current_device() if device.type != "cpu" and hasattr(backend, "current_device") else 0
    return torch.device(device.type, index)


def split_loaders(data_loader: Any) -> tuple[Any, Any]:
    """``(train loader, test loader or None)`` of ``train()``'s ``data_loader`` argument.

    Raises:
        ValueError: a dict without ``train_loader``.
    """
    if isinstance(data_loader, Mapping):
        if "train_loader" not in data_loader:
            raise ValueError(
                "data_loader must be a loader or a dict with 'train_loader' (and 'test_loader'), "
                f"got keys {sorted(data_loader)}"
            )
        return data_loader["train_loader"], data_loader.get("test_loader")
    return data_loader, None
