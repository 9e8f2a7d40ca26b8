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
- an iterable data set with ``state_dict()`` / ``load_state_dict()`` (the convention of torchdata's
  ``StatefulDataLoader``; Hugging Face ``datasets.IterableDataset`` has both), read in the training
  process (``num_workers=0``): :func:`track_positions` notes its state after every batch the
  loader draws, :func:`data_position` gives the state at a checkpoint's position, and the resume
  loads the main process's (the one that reads when Accelerate dispatches) into the data set.
- anything else (an iterable data set without a state, or read by workers): read and dropped,
  the only way to reach the position, with a warning that names the cost.

The prepared loader itself is left as it was: the skipping pass runs on a shallow copy that
shares its sampler (so the seedable sampler's epoch moves on as usual) and its gradient state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from accelerate import PartialState
from accelerate.data_loader import DataLoaderDispatcher, DataLoaderShard, IterableDatasetShard, SkipBatchSampler
from torch.utils.data import IterableDataset

from .loader import _TensorBatchLoader
from .ranks import from_main

__all__ = ["batches_after", "data_position", "read_and_drop", "skips_at_sampler", "track_positions"]

logger = logging.getLogger(__name__)


def batches_after(loader: Any, done: int, warn: Callable[[str], None] | None = logger.warning,
                  saved: Any = None) -> Iterable[Any]:
    """The epoch's batches of the prepared ``loader`` after its first ``done``.

    Args:
        loader: what ``prepare_loader`` (or ``accelerator.prepare``) returned; its epoch already set.
        done: the batches of this epoch already trained on (0: the loader itself).
        warn: called once with the cost when the batches must be read and dropped (None: silent;
            the learner passes it on the main process only).
        saved: this rank's :func:`data_position` at the checkpoint (a stateful iterable data set).
            With one, every rank runs one collective here (the main process's state to all).

    Returns:
        An iterable of the remaining batches, the same as the uninterrupted epoch's from ``done`` on.
    """
    tracker = _tracker(loader)
    if tracker is not None:  # the same on every rank: the data set's class and the loader's workers
        state = from_main(PartialState(), [saved])[0] if done > 0 else None
        if state is not None:
            tracker.dataset.load_state_dict(state)
            tracker.restart(done)
            return loader
        tracker.restart(0)  # from the epoch's start (read and dropped below when done > 0)
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
        reader = "read by dataloader workers" if getattr(base, "num_workers", 0) else "with no saved state_dict()"
        return f"its data set is iterable, {reader}"
    if type(loader) is not DataLoaderShard:
        return f"Accelerate prepared it as {type(loader).__name__}"
    return "its sampler cannot be skipped"


class _Tracker:
    """A collate function that notes the data set's ``state_dict()`` after each batch it collates.

    The loader's own iterator runs ahead of training (Accelerate's end-of-data lookahead, the
    dispatcher's batches for every rank), so the states are kept by the number of the loader's
    batches drawn this epoch, a few back, and :func:`data_position` picks the one of a checkpoint.
    """

    def __init__(self, collate: Callable[[Any], Any], dataset: Any, per_step: int) -> None:
        self.collate, self.dataset, self.per_step = collate, dataset, per_step
        self.drawn, self.states = 0, {}

    def restart(self, done: int) -> None:
        """A pass begins ``done`` steps into the epoch."""
        self.drawn, self.states = done * self.per_step, {}

    def __call__(self, batch: Any) -> Any:
        out = self.collate(batch)
        self.drawn += 1
        self.states[self.drawn] = self.dataset.state_dict()
        for old in [k for k in self.states if k < self.drawn - 4 * self.per_step]:
            del self.states[old]
        return out


def track_positions(prepared: Any) -> Any:
    """Note the positions of a stateful iterable data set as ``prepared`` draws its batches (see :class:`_Tracker`).

    Only a data set read in this process (``num_workers=0``) with callable ``state_dict`` and
    ``load_state_dict``; any other loader is returned untouched.
    """
    base = getattr(prepared, "base_dataloader", None)
    dataset = getattr(base, "dataset", None)
    if isinstance(dataset, IterableDatasetShard):
        dataset = dataset.dataset
    stateful = callable(getattr(dataset, "state_dict", None)) and callable(getattr(dataset, "load_state_dict", None))
    if not isinstance(dataset, IterableDataset) or not stateful or base.num_workers or _tracker(prepared):
        return prepared
    dispatched = isinstance(prepared, DataLoaderDispatcher) and not prepared.split_batches
    per_step = PartialState().num_processes if dispatched else 1
    base.collate_fn = _Tracker(base.collate_fn, dataset, per_step)
    return prepared


def data_position(loader: Any, done: int) -> Any:
    """The data set's state after the first ``done`` batches of the epoch (None: not tracked, or not drawn here)."""
    tracker = _tracker(loader)
    if tracker is None or done <= 0:
        return None
    return tracker.states.get(done * tracker.per_step)


def _tracker(loader: Any) -> _Tracker | None:
    collate = getattr(getattr(loader, "base_dataloader", None), "collate_fn", None)
    return collate if isinstance(collate, _Tracker) else None
