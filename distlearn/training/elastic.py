"""Resuming on another number of processes: the per-process batch that keeps the saved global batch, the
refusals that say why it cannot, and the warning of what changes.

The store (:mod:`.checkpoint`) reads the commit marker and raises; this module only decides and words.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["divisors", "elastic_warning", "mid_epoch_refusal", "resumed_batch"]


def resumed_batch(meta: Mapping[str, Any], resume_from: str | Path, resume_batch: str, world_size: int,
                  current: int | None) -> tuple[int | None, str | None]:
    """The per-process batch a resume from the checkpoint ``meta`` describes trains with on ``world_size``
    processes, and None; or None and why it cannot (see ``Checkpoints.per_process_batch``)."""
    saved_world, global_batch = int(meta.get("world_size") or 0), meta.get("global_batch")
    if saved_world == world_size or not global_batch:
        return current, None
    if resume_batch == "per_process" or current is None:
        if meta.get("batches_done") and (current is None or current * world_size != global_batch):
            return None, mid_epoch_refusal(resume_from, meta, world_size, current)
        return current, None
    if global_batch % world_size:
        return None, (
            f"{resume_from} was saved with a global batch of {global_batch} samples ({saved_world} "
            f"processes of {global_batch // saved_world}); {world_size} processes cannot split it evenly. "
            f"Launch a number of processes that divides {global_batch} (one of {divisors(global_batch)}), or set "
            "run.resume_batch: per_process to keep the loader's per-process batch (from an epoch-end checkpoint)"
        )
    return global_batch // world_size, None


def mid_epoch_refusal(resume_from: str | Path, meta: Mapping[str, Any], world_size: int, current: int | None) -> str:
    """Why a mid-epoch checkpoint cannot go on with this per-process batch on ``world_size`` processes, and the fixes."""
    global_batch, saved_world = int(meta["global_batch"]), int(meta.get("world_size") or 1)
    where = (f"{resume_from} was saved in the middle of epoch {int(meta['epoch']) + 1} "
             f"(after batch {int(meta['batches_done'])}), where the rest of the epoch needs the global batch "
             f"it was saved with: expected {global_batch} samples per step ({saved_world} processes of "
             f"{global_batch // saved_world})")
    splits = global_batch % world_size == 0
    counts = divisors(global_batch)
    on = (f" ({global_batch // world_size} per process)" if splits
          else f" on a number of processes that divides it (one of {counts}; {world_size} does not)")
    if current is None:  # the loader was built with batch_sampler=: its batch can be neither read nor resized
        found = (f"found a training loader without batch_size (a batch_sampler) on {world_size} processes, "
                 "whose global batch can be neither known nor changed")
        fixes = [f"build the DataLoader with batch_size=, so that run.resume_batch: global (the default) "
                 f"keeps {global_batch} per step{on}"]
    else:
        found = (f"found run.resume_batch: per_process with the loader's {current} per process on {world_size} "
                 f"processes, {current * world_size} per step")
        fixes = [f"set run.resume_batch: global (the default) to keep {global_batch} per step{on}"]
        if splits:
            fixes.append(f"keep per_process with a loader batch size of {global_batch // world_size}")
    fixes += [f"launch {saved_world} processes", "resume from an epoch-end checkpoint (run.resume=<its path>)"]
    return f"{where}, {found}. To resume here, " + "; or ".join(fixes)


def divisors(global_batch: int) -> list[int]:
    """The process counts that split ``global_batch`` evenly."""
    return [n for n in range(1, global_batch + 1) if global_batch % n == 0]


def elastic_warning(path: str | Path, saved_world: int, world: int, global_batch: int | None,
                    n_samples: int | None, drop_last: bool = False) -> str:
    """The warning of a resume on another number of processes: what changes, and how close the weights stay.

    The reduction order differs, so the weights match an uninterrupted run's to rounding, but only
    when no step is padded: the epoch's samples are a multiple of the global batch (or the loader
    drops the incomplete last batch). Otherwise Accelerate fills each epoch's last step with repeats
    of other samples on ``world`` processes than on ``saved_world``, and the weights drift further.

    Args:
        path: The checkpoint.
        saved_world, world: The processes that wrote it and those of this launch.
        global_batch: Samples per step over all processes (kept by the resume); None if unknown.
        n_samples: Training samples per epoch; None if unknown.
        drop_last: Whether the training loader drops an incomplete last batch.
    """
    per_process = global_batch // world if global_batch and global_batch % world == 0 else "?"
    head = (f"elastic resume: checkpoint {path} was written by {saved_world} processes, this launch has {world}; "
            f"global batch {global_batch} kept ({per_process} per process), partial epoch merged, random "
            "generators re-derived from (seed, epoch, step, rank); the reduction order differs, ")
    if drop_last:
        return head + ("so the weights match an uninterrupted run only to rounding (the incomplete last batch "
                       "is dropped: no step is padded)")
    if not global_batch or n_samples is None:
        return head + ("so the weights match an uninterrupted run only to rounding if the training samples are a "
                       "multiple of the global batch; otherwise each epoch's last step is padded with other "
                       "repeated samples than on the original process count, and they drift further")
    if n_samples % global_batch == 0:
        return head + (f"so the weights match an uninterrupted run only to rounding ({n_samples} training samples, "
                       f"a multiple of the global batch {global_batch}: no step is padded)")
    processes = f"{world} process" + ("es" if world != 1 else "")
    return head + (f"and {n_samples} training samples are not a multiple of the global batch {global_batch}: "
                   f"each epoch's last step is evened out with repeated samples differently on {processes} than "
                   f"on {saved_world}, so the weights drift further from an uninterrupted run's than rounding")
