"""Building the Accelerator the learner trains with, and refusing the ones that would train wrong.

The trap this module exists for (../PITFALLS.md): `torchrun --nproc_per_node 2`
or `accelerate launch --multi_gpu` on a machine without CUDA starts two
processes, but unless the CPU backend is asked for, each Accelerator sees
`num_processes == 1`: both train on all the data, with no gradient sync and no
error. :func:`build_accelerator` asks for the CPU backend (gloo) whenever the
launcher started several processes and there is no GPU; :func:`check_accelerator`
fails loudly on any Accelerator whose process count disagrees with the launcher.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration

__all__ = ["build_accelerator", "check_accelerator", "launched_world_size"]

logger = logging.getLogger(__name__)

MIXED_PRECISION = ("no", "bf16", "fp16")


def launched_world_size() -> int:
    """How many processes the launcher started (torchrun/accelerate set WORLD_SIZE, MPI its own)."""
    for key in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(key):
            return int(os.environ[key])
    return 1


def _has_gpu() -> bool:
    return torch.accelerator.is_available()  # CUDA, XPU, MPS, ... in one call


def build_accelerator(
    *,
    mixed_precision: str | None = None,
    gradient_accumulation_steps: int = 1,
    seed: int = 0,
    device: str | torch.device | None = None,
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
        **accelerator_kwargs: passed on to ``Accelerator`` (e.g. ``log_with``,
            ``kwargs_handlers=[InitProcessGroupKwargs(timeout=...)]``).

    Returns:
        The Accelerator, already checked by :func:`check_accelerator`.

    Raises:
        ValueError: fp16 without a GPU, an unknown mixed_precision.
        RuntimeError: the Accelerator still disagrees with the launcher.
    """
    if mixed_precision is None:  # Accelerate's own rule: the script's value, else the launcher's
        mixed_precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
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
    accelerator_kwargs.setdefault(
        "dataloader_config", DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed, even_batches=True)
    )
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        # The learner steps its scheduler itself: a prepared scheduler would be stepped
        # num_processes times per call (PITFALLS: StepLR ends at 0.0156 instead of 0.125).
        step_scheduler_with_optimizer=False,
        **accelerator_kwargs,
    )
    check_accelerator(accelerator)
    return accelerator


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
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ValueError("mixed_precision='fp16' on CPU trains silently in float32; use 'bf16' or 'no'")
