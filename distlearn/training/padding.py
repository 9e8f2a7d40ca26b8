"""Dropping Accelerate's padding rows from a rank's batch: the local analogue of ``gather_for_metrics``.

With ``even_batches=True`` (Accelerate's default) every rank gets the same
number of batches: the last global batch is completed with samples from the
start of the data, after the real ones and in rank order. ``gather_for_metrics``
truncates those after gathering; accumulators never gather per batch, so each
rank drops its own padding rows before accumulating:

    for x, y in prepared_loader:
        out = model(x)
        out, y = drop_padding(accelerator, out, y)
        loss(criterion(out, y), weight=len(y))   # exact over all ranks
        acc(y_score=out, y_true=y)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["drop_padding", "real_rows"]


def real_rows(accelerator: Any, rows: int) -> int:
    """How many of this rank's ``rows`` rows of the current batch are real samples.

    On the last batch of an Accelerate-prepared loader
    (``gradient_state.end_of_dataloader`` with ``remainder > 0``) the
    ``remainder`` real samples of the last global batch lie in rank order, so
    rank r holds ``min(rows, max(0, remainder - r * rows))`` of them; every
    other batch is all real. Reads Python numbers only: no host sync.

    Args:
        accelerator: the ``Accelerator`` that prepared the loader.
        rows: this rank's batch size (dim 0 of the batch).
    """
    state = accelerator.gradient_state
    if not state.end_of_dataloader or state.remainder <= 0:
        return rows
    return min(rows, max(0, state.remainder - accelerator.process_index * rows))


def _check_processes(accelerator: Any) -> None:
    """Refuse an Accelerator whose process count is not the process group's (Python numbers only: no sync)."""
    n = getattr(accelerator, "num_processes", None)
    if n is None or not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size()
    if n != world:
        raise RuntimeError(
            f"drop_padding: the Accelerator sees {n} process(es) but the process group holds {world}: each rank "
            "goes through all the data alone, and calculate() would count every sample once per rank. On a "
            "machine without a GPU, build it with distlearn.accelerator.build_accelerator() (or "
            "Accelerator(cpu=True), or launch with ACCELERATE_USE_CPU=1)."
        )


def _rows_of(value: Any) -> int | None:
    if isinstance(value, torch.Tensor):
        return value.shape[0] if value.dim() else None
    if isinstance(value, Mapping):
        for item in value.values():
            rows = _rows_of(item)
            if rows is not None:
                return rows
    return None


def _cut(value: Any, keep: int, rows: int, where: str) -> Any:
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 or value.shape[0] != rows:
            raise ValueError(
                f"drop_padding: {where} has shape {tuple(value.shape)} but the batch has {rows} rows; "
                "pass tensors (or dicts of tensors) with the batch along dim 0"
            )
        return value[:keep]
    if isinstance(value, Mapping):
        return {key: _cut(item, keep, rows, f"{where}[{key!r}]") for key, item in value.items()}
    raise TypeError(f"drop_padding: {where} is a {type(value).__name__}; pass tensors or dicts of tensors")


def drop_padding(accelerator: Any, *tensors: Any) -> Any:
    """This rank's real rows of a batch from an Accelerate-prepared loader.

    Args:
        accelerator: the ``Accelerator`` that prepared the loader.
        *tensors: tensors or dicts of tensors sharing the batch along dim 0
            (model outputs, labels, a batch dict).

    Returns:
        The same structure (one value for one argument, a tuple for several),
        cut to the real rows on the last batch and unchanged otherwise (the
        same objects, no copy).

    Raises:
        RuntimeError: the Accelerator sees fewer processes than the process group
            holds (plain ``torchrun`` on a machine without a GPU): each rank would
            go through all the data and :func:`~distlearn.calculate` would count
            it once per rank.
        ValueError: the arguments disagree on the batch size.
        TypeError: an argument is neither a tensor nor a dict of tensors.
    """
    if not tensors:
        raise TypeError("drop_padding: pass at least one tensor after the accelerator")
    _check_processes(accelerator)
    rows = next((r for r in map(_rows_of, tensors) if r is not None), None)
    keep = rows if rows is None else real_rows(accelerator, rows)
    if rows is None or keep == rows:
        return tensors[0] if len(tensors) == 1 else tensors
    cut = tuple(_cut(value, keep, rows, f"argument {i}") for i, value in enumerate(tensors))
    return cut[0] if len(cut) == 1 else cut
