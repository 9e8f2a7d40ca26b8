"""Randomness that replays: per-sample generators and dataloader worker seeds derived from (seed, epoch, ...).

A mid-epoch resume, or a run on another number of processes or workers, fetches a sample in
another process, at another moment, after other draws from the global generators. Randomness a
sample draws must therefore not come from those generators but from one derived from what
names the sample: the run's seed, the epoch, the sample's index in the data set. The rule,
stable across versions, processes and platforms:

    seed_of(seed, epoch, index) = first 8 bytes of sha256(f"distlearn-sample:{seed}:{epoch}:{index}"),
                                  read little-endian, shifted right by one bit (a 63-bit int)

:func:`sample_generator` is a CPU ``torch.Generator`` seeded with it; ``TorchDataset`` and
``HFDataset`` hand one to their ``transform(sample, generator)`` hook. A user's own data set
can call :func:`sample_generator` in ``__getitem__`` (with the epoch its ``set_epoch`` was given).

Dataloader workers (``num_workers > 0``) seed their global generators (torch, Python, NumPy)
in :class:`WorkerSeeds` from ``seed_of(seed, epoch, "worker-<id>")``, not from the global
generator of the moment the epoch's iterator was made, so a resumed epoch's workers start as
the uninterrupted epoch's did.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["WorkerSeeds", "follow_epochs", "sample_generator", "seed_of"]


def seed_of(seed: int, epoch: int, key: int | str) -> int:
    """The 63-bit seed of ``key`` (a sample's index, or a worker's name) in ``epoch`` of a run seeded ``seed``."""
    digest = hashlib.sha256(f"distlearn-sample:{int(seed)}:{int(epoch)}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator for sample ``index`` of ``epoch``: the same draws on any process, worker or resume."""
    return torch.Generator().manual_seed(seed_of(seed, epoch, int(index)))


class WorkerSeeds:
    """A ``worker_init_fn`` that seeds each worker's global generators from (seed, epoch, worker id).

    Torch seeds worker ``w`` with ``base_seed + w``, ``base_seed`` drawn from the global generator
    when the epoch's iterator is made: a resumed epoch draws it in another state, so its workers
    would draw other numbers. The epoch is set by ``set_epoch`` before the iterator is made (the
    workers get a copy of this object then). A user's own ``worker_init_fn`` runs after.
    """

    def __init__(self, seed: int, user_fn: Callable[[int], Any] | None = None) -> None:
        self.seed, self.epoch, self.user_fn = int(seed), 0, user_fn

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iterator's workers are seeded for."""
        self.epoch = int(epoch)

    def __call__(self, worker_id: int) -> None:
        value = seed_of(self.seed, self.epoch, f"worker-{worker_id}")
        torch.manual_seed(value)
        random.seed(value)
        np.random.seed(value % 2**32)
        if self.user_fn is not None:
            self.user_fn(worker_id)


def follow_epochs(prepared: Any, seed: int) -> Any:
    """Make the prepared loader's ``set_epoch`` reach its data set and its workers' seeds.

    Accelerate's ``set_epoch`` tells the data set its epoch on one process but not on several
    (there it stops at the seedable sampler): a data set whose randomness follows the epoch
    (``set_epoch``, as :class:`~distlearn.data.randomness.Transformed`) is told here on every
    process count. A loader with workers gets :class:`WorkerSeeds` (around its own
    ``worker_init_fn``), seeded with ``seed`` (the data order's).

    Returns:
        ``prepared``, its ``set_epoch`` wrapped where there is something to tell.
    """
    base = getattr(prepared, "base_dataloader", prepared)
    dataset = getattr(base, "dataset", None)
    listeners = [dataset] if callable(getattr(dataset, "set_epoch", None)) else []
    if getattr(base, "num_workers", 0) and not isinstance(base.worker_init_fn, WorkerSeeds):
        base.worker_init_fn = WorkerSeeds(seed, base.worker_init_fn)
    if isinstance(getattr(base, "worker_init_fn", None), WorkerSeeds):
        listeners.append(base.worker_init_fn)
    if not listeners or not hasattr(prepared, "set_epoch"):
        return prepared
    original = prepared.set_epoch

    def set_epoch(epoch: int) -> None:
        original(epoch)
        for listener in listeners:
            listener.set_epoch(epoch)

    prepared.set_epoch = set_epoch
    return prepared
