"""The ``transform(sample, generator)`` hook of ``TorchDataset`` and ``HFDataset``: augmentations that replay.

A data set that draws random numbers from the global generators inside ``__getitem__`` draws
other numbers after a resume (the sample is fetched at another moment) and on another number of
processes or workers (each has its own global generators). :class:`Transformed` instead hands the
transform a generator of its own per sample, seeded from (the data set's seed, the epoch, the
sample's index) by the rule of :func:`~distlearn.runtime.randomness.seed_of`: the same augmented
sample wherever and whenever it is fetched. The loader tells it the epoch (``set_epoch``), kept in
shared memory so that persistent dataloader workers read the current one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch.utils.data import Dataset

from ..runtime.randomness import SharedEpoch, sample_generator
from .checks import resolve_object

__all__ = ["Transformed", "check_transform"]


class Transformed(Dataset):
    """``dataset`` whose sample ``i`` of epoch ``e`` is ``transform(dataset[i], sample_generator(seed, e, i))``.

    Args:
        dataset: a map-style data set.
        transform: ``transform(sample, generator) -> sample``; draw every random number from
            ``generator`` (``torch.rand(..., generator=generator)``, ``torch.randint``, ...).
        seed: the data set's seed.
    """

    def __init__(self, dataset: Dataset, transform: Callable[[Any, Any], Any], seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, int(seed)
        self._epoch = SharedEpoch()  # persistent workers hold a copy of this data set: the epoch must reach them

    @property
    def epoch(self) -> int:
        """The epoch whose augmentations fetches draw, read live (in a worker too)."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentations the next fetches draw (the prepared loader calls it)."""
        self._epoch.set(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.transform(self.dataset[index], sample_generator(self.seed, self.epoch, index))

    def __getattr__(self, name: str) -> Any:  # the data set's own attributes (n_classes, ...)
        # Not its protocol: a forwarded __getitems__ (torch's Subset has one) would fetch past the transform.
        if name in ("dataset", "_epoch") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def check_transform(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The ``transform`` parameter's problems: it must import (a dotted path) and be callable."""
    path = params.get("transform")
    if path is None:
        return []
    try:
        obj = resolve_object(path, "transform")
    except ValueError as error:
        return [("transform", str(error).split(": ", 1)[1])]
    if not callable(obj):
        return [("transform", f"expected a callable transform(sample, generator), got {path!r}")]
    return []
