"""The training loop's progress on one rank: what a checkpoint saves for it, and its elastic resume.

:func:`rank_state` is the state dict of ``learner_state_<rank>.pt`` (the store saves it as it is):
where training is (epoch, optimizer step, position in the epoch as batches and as a sample
offset), the epoch's partial accounting and metric states, the record so far and the random
generators. :func:`reshard` turns the states P ranks saved into rank r of Q's.
"""

from __future__ import annotations

import copy
import hashlib
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..runtime.skipping import data_position
from .epoch import EpochAccounting, merged_accumulator_state
from .preparation import n_samples, prepare_once

__all__ = ["derived_seed", "marker_fields", "rank_state", "reshard", "restore", "resume_progress", "rng_states",
           "save_progress", "set_rng_states"]


def rank_state(*, epoch: int, step: int, batches_done: int, global_batch: int, world_size: int, rank: int,
               accounting: EpochAccounting | None, metric: Any, record: Mapping[str, Any], seed: int,
               selection: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """This rank's progress for a checkpoint; the learner restores it on resume.

    The position is kept two ways: ``batches_done`` (batches of ``epoch`` each rank has trained
    on) and ``samples_done``, the offset in the epoch's global sample order, which does not
    depend on the number of processes. ``accounting`` and ``metric`` are None at an epoch's end.
    ``selection`` is the validation's choice so far (best epoch and score, patience), the same on
    every rank (:meth:`~distlearn.training.selection.Chooser.state_dict`).
    """
    return {
        "epoch": epoch,
        "step": step,
        "batches_done": batches_done,
        "samples_done": batches_done * global_batch,
        "global_batch": global_batch,
        "world_size": world_size,
        "rank": rank,
        "log": None if accounting is None else accounting.state_dict(),
        "metric": None if metric is None else metric.state_dict(),
        "record": copy.deepcopy(record),
        "rng": rng_states(),
        "seed": seed,
        "selection": None if selection is None else dict(selection),
    }


def marker_fields(state: Mapping[str, Any]) -> dict[str, Any]:
    """What the checkpoint's commit marker says of a rank state (``step`` names the folder)."""
    return {key: state[key] for key in ("epoch", "step", "batches_done", "samples_done", "global_batch")}


def reshard(progresses: list[Mapping[str, Any]], rank: int, world_size: int, metric: Any = None) -> dict[str, Any]:
    """Rank ``rank`` of ``world_size``'s share of the progress that ``len(progresses)`` ranks saved.

    The epoch, step, position and record are the same on every saved rank. The epoch's partial
    numbers are merged so that the new ranks' reduction gives what the old ranks' would:

    - the epoch's accounting: see :meth:`~distlearn.training.epoch.EpochAccounting.merged_state`;
    - the metric (``metric`` says how each state reduces): sums on rank 0, neutral elsewhere;
      maxima on every rank;
    - list-like states (``{"items": [...]}``): the saved ranks' items in step-major (dataset)
      order, dealt round-robin over the new ranks.

    The random generator states are re-derived from (seed, epoch, step, rank).

    Args:
        progresses: Every saved rank's progress (:func:`~distlearn.training.checkpoint.load_progress`), in rank order.
        rank: The new rank.
        world_size: The new number of processes.
        metric: An accumulator of the metric's kind (its ``_reductions``), or None.

    Returns:
        A progress dict as a checkpoint of ``world_size`` processes holds for ``rank``.
    """
    first = progresses[0]
    out = dict(first)
    out["world_size"], out["rank"] = world_size, rank
    out["resharded_from"] = len(progresses)
    out["rng"] = _derived_rng(int(first.get("seed", 0)), int(first["epoch"]), int(first["step"]), rank)
    logs = [p.get("log") for p in progresses]
    out["log"] = None if logs[0] is None else EpochAccounting.merged_state(logs, rank)
    metrics = [p.get("metric") for p in progresses]
    out["metric"] = None if metrics[0] is None else merged_accumulator_state(metrics, rank, world_size, metric)
    return out


def restore(checkpoints: Any, accelerator: Any, metric: Any, train_loader: Any, record: dict[str, Any]) -> dict[str, Any]:
    """Load ``checkpoints.resume_from`` into the Accelerator and return this rank's progress.

    A checkpoint of another number of processes is merged into this one's (:func:`reshard`;
    ``metric`` tells how its states reduce). The saved epochs go into ``record``, with
    ``preparation.resumed_from``; at an epoch's end the saved RNG applies now (the next epoch draws).
    """
    def merge(states: list[dict[str, Any]], rank: int, world_size: int) -> dict[str, Any]:
        return reshard(states, rank, world_size, metric)

    progress = checkpoints.load(accelerator, checkpoints.resume_from, merge, n_samples=n_samples(train_loader),
                                drop_last=bool(getattr(train_loader, "drop_last", False)))
    record["training"].update(progress["record"]["training"])
    # This session's part: the summary tells its wall time from the whole run's training time by it.
    record["preparation"]["resumed_from"] = {
        "epoch": int(progress["epoch"]), "batches_done": int(progress["batches_done"]),
        "optimizer_step": int(progress["step"]),
    }
    if not progress["batches_done"]:
        set_rng_states(progress["rng"])
    return progress


def resume_progress(run: Any, record: dict[str, Any], train_loader: Any, eval_loaders: Any,
                    loaders: Any) -> dict[str, Any]:
    """This rank's progress in ``run.checkpoints.resume_from`` (see :func:`restore`), once the evaluation
    loaders (``eval_loaders``, None for a missing one) are prepared into the learner's cache ``loaders``,
    in the order they were saved in."""
    for loader in eval_loaders:
        if loader is not None:
            prepare_once(loaders, run.accelerator, loader, evaluation=True)
    return restore(run.checkpoints, run.accelerator, run.metric, train_loader, record)


def save_progress(run: Any, epoch: int, step: int, batches_done: int, accounting: EpochAccounting | None,
                  record: Mapping[str, Any], seed: int, selection: Mapping[str, Any] | None, wait: bool = False) -> Any:
    """Save a checkpoint of this rank's progress in ``run`` (``accounting`` None: at an epoch's end, without the
    metric); ``wait``: committed on return, also when written in the background (a stop, the last save)."""
    accelerator = run.accelerator
    state = rank_state(
        epoch=epoch, step=step, batches_done=batches_done, global_batch=int(getattr(run.loader, "total_batch_size", 0)),
        world_size=accelerator.num_processes, rank=accelerator.process_index, accounting=accounting,
        metric=None if accounting is None else run.metric, record=record, seed=seed, selection=selection,
    )
    state["data"] = data_position(run.loader, batches_done)  # a stateful iterable data set's, else None
    return run.checkpoints.save(accelerator, state, marker_fields(state), wait=wait)


def derived_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """A seed for rank ``rank`` of a run resumed on another number of processes (a 63-bit hash of the four)."""
    digest = hashlib.sha256(f"distlearn-elastic:{seed}:{epoch}:{step}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def rng_states() -> dict[str, Any]:
    """This process's random generators (torch CPU and accelerator devices, Python, NumPy)."""
    states = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore the generators :func:`rng_states` read."""
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _derived_rng(seed: int, epoch: int, step: int, rank: int) -> dict[str, Any]:
    """The generator states (torch, Python, NumPy, CUDA) seeded from :func:`derived_seed`; the current ones are kept."""
    before = rng_states()
    value = derived_seed(seed, epoch, step, rank)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)  # seeds every CUDA device too
    derived = rng_states()
    set_rng_states(before)
    return derived
