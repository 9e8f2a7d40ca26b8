"""A resumed epoch's batches: the saved position reached without fetching the samples before it.

A mid-epoch resume continues at batch ``done`` of the epoch. Reading the first ``done`` batches
and dropping them costs what training on them cost to read (an hour into an epoch of costly
samples, up to that hour again). :func:`batches_after` skips them where the loader allows it:

- a map-style data set (``__len__`` and ``__getitem__``): at the batch sampler, as Accelerate's
  ``skip_first_batches`` does. The sampler still lays out the whole epoch (indices only, the
  same shuffle, sharding and ``even_batches`` repeats), so the batches that follow are exactly
  those of the uninterrupted epoch, and no skipped sample is fetched. (The repeats that even
  out the epoch's last batch come from its start: those few samples are read again, as in the
  uninterrupted epoch.)
- the in-memory fast path (:mod:`.loader`): the epoch's indices are computed as one tensor and
  the skipped batches' slices are never gathered.
- anything else (an iterable data set, a loader Accelerate dispatches from the main process):
  read and dropped, the only way to reach the position, with a warning that names the cost.

The prepared loader itself is left as it was: the skipping pass runs on a shallow copy that
shares its sampler (so the seedable sampler's epoch moves on as usual) and its gradient state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from accelerate.data_loader import DataLoaderShard, SkipBatchSampler
from torch.utils.data import IterableDataset

from .loader import _TensorBatchLoader

__all__ = ["batches_after", "read_and_drop", "skips_at_sampler"]

logger = logging.getLogger(__name__)


def batches_after(loader: Any, done: int, warn: Callable[[str], None] | None = logger.warning) -> Iterable[Any]:
    """The epoch's batches of the prepared ``loader`` after its first ``done``.

    Args:
        loader: what ``prepare_loader`` (or ``accelerator.prepare``) returned; its epoch already set.
        done: the batches of this epoch already trained on (0: the loader itself).
        warn: called once with the cost when the batches must be read and dropped (None: silent;
            the learner passes it on the main process only).

    Returns:
        An iterable of the remaining batches, the same as the uninterrupted epoch's from ``done`` on.
    """
    if done <= 0:
        return loader
    skipping = _skipping_copy(loader, done)
    if skipping is not None:
        return _iterated(skipping, loader)
    if warn is not None:
        warn(_read_cost(loader, done))
    return read_and_drop(loader, done)


def skips_at_sampler(loader: Any) -> bool:
    """Whether :func:`batches_after` reaches a position in ``loader`` without fetching the samples before it."""
    return _skipping_copy(loader, 1) is not None


def read_and_drop(loader: Iterable[Any], done: int) -> Iterator[Any]:
    """The loader's batches after the first ``done``, read and dropped (the order is the loader's own)."""
    for i, batch in enumerate(loader):
        if i >= done:
            yield batch


def _skipping_copy(loader: Any, done: int) -> Any | None:
    """A shallow copy of a prepared ``DataLoaderShard`` that starts at batch ``done``, or None where
    the batches must be read (not a shard, an iterable data set, a sampler of unknown kind)."""
    if type(loader) is not DataLoaderShard or getattr(loader, "skip_batches", 0):
        return None
    base = loader.base_dataloader
    if isinstance(base.dataset, IterableDataset):
        return None
    inner = object.__new__(type(base))
    inner.__dict__.update(base.__dict__)
    inner.__dict__["_iterator"] = None  # a persistent-workers iterator belongs to the original
    if type(base) is _TensorBatchLoader:
        inner.__dict__["start"] = done  # the fast path: the skipped slices are never gathered
    elif base.batch_sampler is not None:
        # DataLoader forbids a new batch_sampler once built; this copy is ours. Accelerate's own class,
        # so its total_batch_size (the gradient state's remainder) looks through it.
        object.__setattr__(inner, "batch_sampler", SkipBatchSampler(base.batch_sampler, done))
    elif base.sampler is not None and hasattr(base.sampler, "__iter__"):
        object.__setattr__(inner, "sampler", SkipBatchSampler(base.sampler, done))  # sampler=BatchSampler(...)
    else:
        return None
    shard = object.__new__(type(loader))
    shard.__dict__.update(loader.__dict__)
    shard.__dict__["base_dataloader"] = inner
    return shard


def _iterated(skipping: Any, loader: Any) -> Iterator[Any]:
    """Iterate the skipping copy; then the original counts the epoch as iterated, as after its own pass."""
    yield from skipping
    loader.iteration = skipping.iteration


def _read_cost(loader: Any, done: int) -> str:
    size = getattr(loader, "total_batch_size", None) or getattr(loader, "batch_size", None)
    samples = f" ({done * size} samples over all processes)" if size else ""
    return (
        f"resuming mid-epoch: the {done} batches already trained on{samples} are read again and dropped, "
        f"because this training loader cannot skip them ({_why(loader)}); a map-style data set "
        "(__len__ and __getitem__) skips them without reading a sample"
    )


def _why(loader: Any) -> str:
    base = getattr(loader, "base_dataloader", loader)
    if isinstance(getattr(base, "dataset", None), IterableDataset):
        return "its data set is iterable"
    if type(loader) is not DataLoaderShard:
        return f"Accelerate prepared it as {type(loader).__name__}"
    return "its sampler cannot be skipped"
