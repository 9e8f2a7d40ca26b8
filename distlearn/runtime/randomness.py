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

Persistent workers (``persistent_workers=True``) outlive the epoch they started in and hold copies
of the data set made then. The epoch therefore lives in a :class:`SharedEpoch` (one int64 in shared
memory, written by ``set_epoch`` in the training process, read live in the workers, under fork and
spawn alike), and :func:`follow_epochs` has each persistent worker re-seed its generators at its
first fetch of a new epoch: the same draws as fresh workers for that epoch.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

__all__ = ["SharedEpoch", "WorkerSeeds", "follow_epochs", "sample_generator", "seed_of"]


def seed_of(seed: int, epoch: int, key: int | str) -> int:
    """The 63-bit seed of ``key`` (a sample's index, or a worker's name) in ``epoch`` of a run seeded ``seed``."""
    digest = hashlib.sha256(f"distlearn-sample:{int(seed)}:{int(epoch)}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator for sample ``index`` of ``epoch``: the same draws on any process, worker or resume."""
    return torch.Generator().manual_seed(seed_of(seed, epoch, int(index)))


class SharedEpoch:
    """An epoch number that dataloader workers read as the training process writes it.

    A plain attribute set by ``set_epoch`` stays in the training process: persistent workers
    keep the copy of the data set they started with. One int64 in shared memory reaches them,
    inherited under fork and passed by handle under spawn (torch pickles shared tensors so).
    A data set of your own holds one and reads ``int(...)`` in ``__getitem__``.
    """

    def __init__(self, epoch: int = 0) -> None:
        self._value = torch.tensor([int(epoch)], dtype=torch.int64).share_memory_()

    def set(self, epoch: int) -> None:
        """Write the epoch (in the training process, before the epoch's iterator is made)."""
        self._value[0] = int(epoch)

    def __int__(self) -> int:
        return int(self._value[0])

    def __repr__(self) -> str:
        return f"SharedEpoch({int(self)})"


class WorkerSeeds:
    """A ``worker_init_fn`` that seeds each worker's global generators from (seed, epoch, worker id).

    Torch seeds worker ``w`` with ``base_seed + w``, ``base_seed`` drawn from the global generator
    when the epoch's iterator is made: a resumed epoch draws it in another state, so its workers
    would draw other numbers. The epoch is set by ``set_epoch`` before the iterator is made, in
    shared memory, so that a persistent worker re-seeds (:meth:`follow`) when it changes. A user's
    own ``worker_init_fn`` runs after, once per worker start.
    """

    def __init__(self, seed: int, user_fn: Callable[[int], Any] | None = None) -> None:
        self.seed, self.user_fn, self._epoch = int(seed), user_fn, SharedEpoch()
        self.seeded_for: int | None = None  # per worker: each holds its own copy of this object

    @property
    def epoch(self) -> int:
        """The epoch the workers are seeded for."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iterator's workers are seeded for (persistent ones included)."""
        self._epoch.set(epoch)

    def __call__(self, worker_id: int) -> None:
        self._seed(worker_id)
        if self.user_fn is not None:
            self.user_fn(worker_id)

    def follow(self) -> None:
        """In a worker: re-seed if the epoch changed since this worker was seeded (a persistent worker)."""
        info = torch.utils.data.get_worker_info()
        if info is not None and self.seeded_for != self.epoch:
            self._seed(info.id)

    def _seed(self, worker_id: int) -> None:
        epoch = self.epoch
        value = seed_of(self.seed, epoch, f"worker-{worker_id}")
        torch.manual_seed(value)
        random.seed(value)
        np.random.seed(value % 2**32)
        self.seeded_for = epoch


class _Following(Dataset):
    """A map-style data set whose fetches in a persistent worker first follow the epoch (:meth:`WorkerSeeds.follow`).

    The only code of ours a persistent worker runs at each fetch; a worker's first fetch of an epoch
    therefore re-seeds it before the data set draws.
    """

    def __init__(self, dataset: Dataset, seeds: WorkerSeeds) -> None:
        self.dataset, self.seeds = dataset, seeds

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        self.seeds.follow()
        return self.dataset[index]

    def __getitems__(self, indices: list[Any]) -> list[Any]:
        self.seeds.follow()
        many = getattr(self.dataset, "__getitems__", None)  # as torch's fetcher would call the data set
        return many(indices) if many else [self.dataset[i] for i in indices]

    def __getattr__(self, name: str) -> Any:  # the data set's own attributes (n_classes, state_dict, ...)
        if name in ("dataset", "seeds") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class _FollowingIterable(IterableDataset):
    """An iterable data set whose iteration in a persistent worker starts by following the epoch."""

    def __init__(self, dataset: IterableDataset, seeds: WorkerSeeds) -> None:
        self.dataset, self.seeds = dataset, seeds

    def __iter__(self) -> Any:
        self.seeds.follow()  # a persistent worker makes its epoch's iterator after the epoch is set
        return iter(self.dataset)

    def __len__(self) -> int:
        return len(self.dataset)  # TypeError where the data set has no length, as without this wrapper

    __getattr__ = _Following.__getattr__


def _follow_in_persistent_workers(base: Any, seeds: WorkerSeeds) -> None:
    """Wrap a persistent-workers loader's data set so that each worker re-seeds at its first fetch of an epoch."""
    if not getattr(base, "persistent_workers", False) or isinstance(base.dataset, (_Following, _FollowingIterable)):
        return
    wrapper = _FollowingIterable if isinstance(base.dataset, IterableDataset) else _Following
    # A DataLoader refuses a new dataset once built; this one is Accelerate's copy, made by prepare.
    object.__setattr__(base, "dataset", wrapper(base.dataset, seeds))


def follow_epochs(prepared: Any, seed: int) -> Any:
    """Make the prepared loader's ``set_epoch`` reach its data set and its workers' seeds.

    Accelerate's ``set_epoch`` tells the data set its epoch on one process but not on several
    (there it stops at the seedable sampler): a data set whose randomness follows the epoch
    (``set_epoch``, as :class:`~distlearn.data.randomness.Transformed`) is told here on every
    process count. A loader with workers gets :class:`WorkerSeeds` (around its own
    ``worker_init_fn``), seeded with ``seed`` (the data order's); with persistent workers, its
    data set is wrapped so that each worker re-seeds at its first fetch of a new epoch.

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
        _follow_in_persistent_workers(base, base.worker_init_fn)
    if not listeners or not hasattr(prepared, "set_epoch"):
        return prepared
    original = prepared.set_epoch

    def set_epoch(epoch: int) -> None:
        original(epoch)
        for listener in listeners:
            listener.set_epoch(epoch)

    prepared.set_epoch = set_epoch
    return prepared
