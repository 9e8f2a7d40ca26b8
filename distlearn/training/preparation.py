"""What ``train()`` and ``test()`` check and prepare before their loops: loaders, devices, Accelerate's lists,
the optimizer and scheduler, and the run (:func:`prepare_run`).

The learner's objects live in Accelerate's lists of prepared objects (``save_state``
saves every entry); :func:`registered_models` and :func:`unregister` are the only
places that touch those lists, through :func:`_prepared_lists`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import logging

import torch
from accelerate import Accelerator
from torch import nn

from ..metrics import Metric, Metrics
from ..options import NONFINITE_MODES
from ..runtime.accelerator import prepare_loader
from .batches import BatchRunner, agree_on_batch, leaves_out_ignored
from .checkpoint import Checkpoints
from .configs import check_int
from .model_options import ModelOptions, apply_model_options
from .shared_folder import check_checkpoint_folder
from .steps import TrainRun, stepper

__all__ = [
    "build_optimizer", "check_device", "check_loader", "check_optimizer", "check_train_options", "n_samples", "prepare_once", "prepare_run", "registered_models", "resolved_device", "resume_loader", "split_loaders", "unregister",
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


def check_train_options(display_step: int, nonfinite: str) -> None:
    """Raise ValueError on ``train()``'s ``display_step`` or ``nonfinite`` out of range."""
    check_int("display_step", display_step, 1)
    if nonfinite not in NONFINITE_MODES:
        raise ValueError(f"nonfinite must be one of {NONFINITE_MODES}, got {nonfinite!r}")


def check_optimizer(optimizer: Any, optimizer_spec: Any) -> None:
    """Raise ValueError when the learner has neither an optimizer nor its config."""
    if optimizer is None and optimizer_spec is None:
        raise ValueError(
            "BackwardLearner has no optimizer: pass optimizer=... or optimizer_configs={'optimizer_class': ...}"
        )


def build_optimizer(model: nn.Module, optimizer: Any, scheduler: Any, optimizer_spec: Any,
                    scheduler_spec: Any) -> tuple[Any, Any]:
    """The optimizer and scheduler to train with: the ready objects win, else each is built from its
    ``(class, parameters)`` spec (parameters deep-copied), on the model's parameters and on that optimizer."""
    if optimizer is None:
        optimizer_class, parameters = optimizer_spec
        optimizer = optimizer_class(model.parameters(), **copy.deepcopy(parameters))
    if scheduler is None and scheduler_spec is not None:
        scheduler_class, parameters = scheduler_spec
        scheduler = scheduler_class(optimizer, **copy.deepcopy(parameters))
    return optimizer, scheduler


def prepare_once(prepared: MutableMapping, accelerator: Accelerator, loader: Any, evaluation: bool = False) -> Any:
    """``loader`` prepared once per ``prepared`` (the learner's cache, user's loader -> prepared: re-preparing
    would register it with Accelerate again).

    An evaluation loader with ``drop_last=True`` is refused: the samples it leaves out would
    depend on the number of processes.
    """
    if not isinstance(loader, torch.utils.data.DataLoader):
        raise TypeError(f"expected a torch.utils.data.DataLoader, got {type(loader).__name__}")
    if loader not in prepared:
        prepared[loader] = prepare_loader(accelerator, loader, drop_last_ok=not evaluation)
    return prepared[loader]


def prepare_run(accelerator: Accelerator, model: nn.Module, optimizer: Any, scheduler: Any, train_loader: Any,
                loaders: MutableMapping, prepared: dict[str, Any], model_options: ModelOptions, new_batches: Callable[[], BatchRunner],
                metric: Metric | Metrics | None, train_idx: Any, checkpoints: Checkpoints | None,
                nonfinite: str) -> TrainRun:
    """Everything one ``train()`` prepares with Accelerate, as the run its loop carries.

    ``prepared`` (kind -> object) holds the last train()'s objects: they are unregistered (else
    ``save_state()`` would save them too) and it is refilled, in place, with this one's.
    ``loaders`` is the learner's cache of prepared loaders (see :func:`prepare_once`); ``new_batches``
    makes the run's :class:`~distlearn.training.batches.BatchRunner`. With ``checkpoints`` on several
    processes, every rank must first see their folder (:func:`~distlearn.training.shared_folder.check_checkpoint_folder`).
    """
    if checkpoints is not None:  # before anything is trained: every rank must see the folder the saves go to
        check_checkpoint_folder(accelerator, checkpoints)
    unregister(accelerator, prepared)
    prepared.clear()
    apply_model_options(model, model_options, accelerator.device,  # in place: the user's key names
                        accelerator.state.dynamo_plugin.backend.value)
    model, optimizer = accelerator.prepare(model, optimizer)
    loader = prepare_once(loaders, accelerator, train_loader)
    if scheduler is not None:
        scheduler = accelerator.prepare(scheduler)  # so that save_state() includes it ...
        scheduler.step_with_optimizer = False  # ... but stepped by us, once (not num_processes times)
    prepared.update(model=model, optimizer=optimizer, scheduler=scheduler)
    check_loader("data_loader['train_loader']", train_loader, loader)
    batches = new_batches()
    # Token targets reach the metric with the ignored tokens left in when it leaves them out itself
    # (a mask on the device); taking them out first is boolean indexing, a host sync per step.
    keep_ignored = leaves_out_ignored(metric, batches.ignore_index)
    train_idx = None if train_idx is None else torch.as_tensor(train_idx, device=accelerator.device)
    return TrainRun(accelerator, model, optimizer, scheduler, loader, batches, metric, keep_ignored, train_idx,
                    checkpoints, nonfinite, stepper(accelerator, optimizer))
