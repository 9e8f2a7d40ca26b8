"""Building the Accelerator the learner trains with, and refusing the ones that would train wrong.

The trap this module exists for (docs/pitfalls.md): `torchrun --nproc_per_node 2`
or `accelerate launch --multi_gpu` on a machine without CUDA starts two
processes, but unless the CPU backend is asked for, each Accelerator sees
`num_processes == 1`: both train on all the data, with no gradient sync and no
error. :func:`build_accelerator` asks for the CPU backend (gloo) whenever the
launcher started several processes and there is no GPU; :func:`check_accelerator`
fails loudly on any Accelerator whose process count disagrees with the launcher.
"""

from __future__ import annotations

import copy
import logging
from datetime import timedelta
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.data_loader import (
    DataLoaderDispatcher,
    DataLoaderShard,
    SeedableRandomSampler,
)
from accelerate.utils import DataLoaderConfiguration, DistributedType, InitProcessGroupKwargs
from torch.utils.data import BatchSampler

from .randomness import follow_epochs
from .skipping import track_positions
from .launch import (
    deepspeed_asked,
    fsdp_asked,
    launched_world_size,
    launcher_mixed_precision,
    warn_single_process_launch,
)
from ..options import DEFAULT_TIMEOUT_S, MIXED_PRECISION

__all__ = ["build_accelerator", "check_accelerator", "check_loader", "launched_world_size", "prepare_loader"]

logger = logging.getLogger(__name__)


def _has_gpu() -> bool:
    return torch.accelerator.is_available()  # CUDA, XPU, MPS, ... in one call


def build_accelerator(
    *,
    mixed_precision: str | None = None,
    gradient_accumulation_steps: int = 1,
    seed: int = 0,
    device: str | torch.device | None = None,
    timeout_s: float | None = None,
    **accelerator_kwargs: Any,
) -> Accelerator:
    """An Accelerator that sees every launched process, with a seedable data order.

    Args:
        mixed_precision: "no", "bf16" or "fp16" (fp16 needs a GPU); None: the
            launcher's (``accelerate launch --mixed_precision``, its config file), else "no".
        gradient_accumulation_steps: micro-batches per optimizer step.
        seed: seed of the shuffled data order; the order of epoch e depends only
            on (seed, e), whatever the number of processes (for exact resume).
        device: an explicit device, honoured on a single process ("cpu" or
            "cuda:k"); ignored with a warning on several processes, where each
            rank takes its own device.
        timeout_s: how long a collective (``calculate()`` included) waits for a
            process that ended or never calls it, in seconds. None: the CLI's
            ``run.timeout_s`` default (300) for a group this call starts, and
            the existing group's own timeout when one was already started.
            An ``InitProcessGroupKwargs`` handler in ``kwargs_handlers`` wins.
        **accelerator_kwargs: passed on to ``Accelerator`` (e.g. ``log_with``,
            ``kwargs_handlers=[InitProcessGroupKwargs(timeout=...)]``).

    Use it in your own loop too (instead of ``Accelerator(...)``): a plain
    ``torchrun --nproc_per_node 2`` on a machine without a GPU then trains on 2
    processes, not twice alone on all the data. When ``accelerate launch`` was
    asked for several processes and started one, it logs a warning (once per
    process) naming a command that starts them.

    Returns:
        The Accelerator, already checked by :func:`check_accelerator`.

    Raises:
        ValueError: fp16 without a GPU, an unknown mixed_precision.
        RuntimeError: the Accelerator still disagrees with the launcher.
    """
    # `accelerate launch --cpu --num_processes 2` starts one process: say so (once, the CLI may have already)
    warn_single_process_launch(logger.warning)
    if mixed_precision is None:  # Accelerate's own rule: the script's value, else the launcher's
        mixed_precision = launcher_mixed_precision()
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {mixed_precision!r}")
    world = launched_world_size()
    cpu = bool(accelerator_kwargs.pop("cpu", False))
    if device is not None:
        device = torch.device(device)
        if world > 1:
            logger.warning("device=%s is ignored on %d processes: each rank uses its own device", device, world)
        elif device.type == "cpu":
            cpu = True
        elif device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # Accelerate places a single process on the current CUDA device
    if world > 1 and not cpu and not _has_gpu():
        # The trap: without this, each of the `world` processes trains alone on all the data.
        logger.info("%d processes launched and no GPU: using the CPU backend (gloo)", world)
        cpu = True
    if mixed_precision == "fp16" and (cpu or not _has_gpu()):
        raise ValueError(
            "mixed_precision='fp16' needs a GPU: on CPU Accelerate silently trains in float32. Use 'bf16' or 'no'."
        )
    if deepspeed_asked() or accelerator_kwargs.get("deepspeed_plugin") or accelerator_kwargs.get("deepspeed_plugins"):
        raise ValueError(_NO_DEEPSPEED)
    accelerator_kwargs.setdefault(
        "dataloader_config",
        # non_blocking: batches copied to a CUDA device without a host sync (with pinned loaders)
        DataLoaderConfiguration(
            use_seedable_sampler=True, data_seed=seed, even_batches=True, non_blocking=not cpu and _has_gpu()
        ),
    )
    _apply_timeout(timeout_s, accelerator_kwargs)
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        # The learner steps its scheduler itself: a prepared scheduler would be stepped
        # num_processes times per call (StepLR(gamma=0.5) over 3 epochs on 2 processes ended at 0.0156 instead of 0.125).
        step_scheduler_with_optimizer=False,
        **accelerator_kwargs,
    )
    check_accelerator(accelerator)
    return accelerator


def _apply_timeout(timeout_s: float | None, accelerator_kwargs: dict[str, Any]) -> None:
    """Give the process group ``timeout_s`` (default: the CLI's), unless a handler already sets one.

    Torch's own default is 30 minutes. A group that already exists (started by the caller or the
    CLI) keeps its timeout unless ``timeout_s`` was given; then it is set on that group.
    """
    handlers = list(accelerator_kwargs.get("kwargs_handlers") or [])
    if any(isinstance(handler, InitProcessGroupKwargs) for handler in handlers):
        return
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if timeout_s is not None:  # Accelerate ignores InitProcessGroupKwargs for an existing group
            torch.distributed.distributed_c10d._set_pg_timeout(timedelta(seconds=timeout_s))
        return
    seconds = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    accelerator_kwargs["kwargs_handlers"] = [*handlers, InitProcessGroupKwargs(timeout=timedelta(seconds=seconds))]


# DeepSpeed needs the loader prepared with the model (for its micro-batch size), clips and casts inside
# engine.step(), and gathers ZeRO-3 weights its own way: not wired yet, so refused before anything starts.
_NO_DEEPSPEED = (
    "DeepSpeed is not supported by distlearn yet (the Accelerate config or ACCELERATE_USE_DEEPSPEED asks for it). "
    "Use FSDP (configs/accelerate/fsdp.yaml) or plain data parallel (configs/accelerate/gpu_multi.yaml) instead."
)


def check_accelerator(accelerator: Accelerator) -> None:
    """Refuse an Accelerator that would train wrong in this launch.

    Raises:
        RuntimeError: it sees fewer processes than were launched (the CPU trap).
        ValueError: ``even_batches=False`` (ranks with different batch counts hang
            in the gradient all-reduce), or fp16 on a CPU device.
    """
    world = launched_world_size()
    if accelerator.num_processes != world:
        raise RuntimeError(
            f"{world} processes were launched (WORLD_SIZE={world}) but the Accelerator sees "
            f"{accelerator.num_processes}: each process would train alone on all the data. "
            + (
                "On a machine without a GPU, set ACCELERATE_USE_CPU=1 or create it with Accelerator(cpu=True) "
                "(or let distlearn build it: don't pass accelerator=)."
                if not _has_gpu()
                else "Check the launcher configuration (accelerate config / torchrun arguments)."
            )
        )
    if not accelerator.even_batches:
        raise ValueError(
            "Accelerator(even_batches=False) is not supported: ranks with different numbers of batches hang in "
            "the gradient all-reduce. Use the default even_batches=True; distlearn drops the repeated samples "
            "from every reported number."
        )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ValueError(_NO_DEEPSPEED)
    if fsdp_asked() and accelerator.distributed_type != DistributedType.FSDP:
        # Accelerate chooses FSDP for GPU-like devices only and otherwise drops the request without a word.
        logger.warning(
            "FSDP was asked for (ACCELERATE_USE_FSDP=true, e.g. configs/accelerate/fsdp.yaml) but Accelerate chose %s "
            "on device %s: FSDP needs GPUs, so every process holds the whole model. Use a CPU or GPU data-parallel "
            "config to silence this.",
            accelerator.distributed_type.value, accelerator.device,
        )
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ValueError("mixed_precision='fp16' on CPU trains silently in float32; use 'bf16' or 'no'")


# Data loaders: every sample exactly once, whatever the loader's shape.


def _sampler_is_batch_sampler(loader: Any) -> bool:
    return getattr(loader, "batch_size", 0) is None and isinstance(getattr(loader, "sampler", None), BatchSampler)


def check_loader(loader: Any, *, drop_last_ok: bool = True) -> None:
    """Refuse a raw DataLoader whose prepared form could not give every sample exactly once.

    Shapes found exact under Accelerate 1.15 with ``even_batches=True`` and
    :func:`~distlearn.drop_padding` (1-3 processes, uneven data): ``batch_size=``
    with or without ``shuffle``, ``batch_sampler=BatchSampler(...)``,
    ``sampler=BatchSampler(...)`` with ``batch_size=None`` (once
    :func:`prepare_loader` repairs it), an ``IterableDataset`` that yields the
    same order on every rank, ``split_batches`` and ``dispatch_batches``.

    Args:
        loader: the user's DataLoader, before preparation.
        drop_last_ok: False for loaders whose every sample must count (test
            loaders): ``drop_last=True`` then drops a whole incomplete global
            batch, so the evaluated samples depend on the number of processes.

    Raises:
        ValueError: ``drop_last=True`` where it is not ok; a ``BatchSampler``
            sampler whose ``drop_last`` is set where it is not ok.
    """
    drop_last = bool(getattr(loader, "drop_last", False))
    if _sampler_is_batch_sampler(loader):
        drop_last = drop_last or bool(getattr(loader.sampler, "drop_last", False))
    batch_sampler = getattr(loader, "batch_sampler", None)
    if isinstance(batch_sampler, BatchSampler) and type(batch_sampler) is BatchSampler:
        drop_last = drop_last or batch_sampler.drop_last
    if drop_last and not drop_last_ok:
        raise ValueError(
            "the evaluation loader has drop_last=True: the last incomplete global batch would be left out, so the "
            "samples evaluated (and the result) would depend on the number of processes (22 samples, batch 4: "
            "20 counted on 1 process, 16 on 2, 12 on 3). Build it with drop_last=False; distlearn drops "
            "Accelerate's padding rows itself."
        )


def prepare_loader(accelerator: Accelerator, loader: Any, *, drop_last_ok: bool = True) -> Any:
    """``accelerator.prepare(loader)``, checked by :func:`check_loader` and repaired where Accelerate is wrong.

    The repair: a loader built as ``DataLoader(ds, sampler=BatchSampler(RandomSampler(ds), ...),
    batch_size=None)`` under ``use_seedable_sampler=True``. Accelerate 1.15 makes
    the seedable sampler but leaves the user's BatchSampler drawing from the
    original RandomSampler, seeded by each rank's own global RNG: the ranks
    shuffle differently and the epoch holds duplicates (22 rows, 15 distinct on
    2 and 3 processes) and misses samples. On one process its ``prepare``
    fails with ``TypeError: got multiple values for keyword argument 'batch_size'``.
    Here the BatchSampler (a copy; the user's is left alone) draws from the
    seedable sampler, and ``set_epoch`` reaches it.

    A loader over :class:`~distlearn.data.TensorBatches` (distlearn's in-memory tensors, with
    the ``batched`` collation, no workers, a shuffled or sequential sampler) takes the fast path
    of :func:`~distlearn.data.index_tensor_batches`: the same batches, without Python work per
    index. Any other loader is prepared as Accelerate prepares it. Its ``set_epoch`` then also
    reaches the data set and the workers' seeds (:func:`~distlearn.runtime.randomness.follow_epochs`),
    and a stateful iterable data set's positions are noted (:func:`~distlearn.runtime.skipping.track_positions`).

    Args:
        accelerator: the Accelerator.
        loader: a DataLoader (already prepared ones are returned as they are).
        drop_last_ok: see :func:`check_loader`.

    Returns:
        The prepared loader.
    """
    if isinstance(loader, (DataLoaderShard, DataLoaderDispatcher)):
        return loader
    check_loader(loader, drop_last_ok=drop_last_ok)
    seed = accelerator.dataloader_config.data_seed or 0
    if not _sampler_is_batch_sampler(loader):
        from .loader import index_tensor_batches  # the in-memory tensors' fast path

        return track_positions(follow_epochs(index_tensor_batches(accelerator.prepare(loader)), seed))
    batches = copy.copy(loader.sampler)  # the user's BatchSampler stays as it was
    source = copy.copy(loader)
    # DataLoader forbids setting samplers after construction; this copy is ours. With the
    # BatchSampler as batch_sampler too, Accelerate builds the one-process loader without the TypeError.
    object.__setattr__(source, "sampler", batches)
    if accelerator.num_processes == 1:
        object.__setattr__(source, "batch_sampler", batches)
    prepared = accelerator.prepare(source)
    shard = getattr(prepared, "sampler", None)
    seedable = getattr(shard, "sampler", None)
    inner = getattr(shard, "batch_sampler", shard)
    if isinstance(seedable, SeedableRandomSampler) and isinstance(inner, BatchSampler):
        inner.sampler = seedable  # every rank now draws the same order, seeded by (data_seed, epoch)
        original = prepared.set_epoch

        def set_epoch(epoch: int) -> None:
            original(epoch)
            seedable.set_epoch(epoch)

        prepared.set_epoch = set_epoch
    return track_positions(follow_epochs(prepared, seed))
