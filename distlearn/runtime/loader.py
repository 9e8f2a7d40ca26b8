"""The in-memory loader: batches of tensors by one ``index_select``, mirroring Accelerate's loader.

:class:`TensorBatches` hands a ``DataLoader`` a whole batch of indices at once and gets the
batch by one ``index_select`` per tensor, instead of indexing sample by sample and stacking.
Prepared by :func:`distlearn.runtime.accelerator.prepare_loader` (as the learner prepares
loaders), it goes further (:func:`index_tensor_batches`): each pass's indices are computed as
one tensor and the batches are slices of rows gathered at once, with no Python work per index
or per sample. Accelerate's own loader is kept around it (device placement, the end-of-data
lookahead, the gradient state, ``set_epoch``), and the order (Accelerate's seedable sampler for
``(seed, epoch)``), the sharding across processes and the padding of the last batch
(``even_batches``' repeats from the start) are exactly those of a plain ``TensorDataset``
loader. Prepared by ``accelerator.prepare`` alone, it gives the same batches on the per-batch path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from accelerate.data_loader import (
    BatchSamplerShard,
    DataLoaderShard,
    SeedableRandomSampler,
)
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    Sampler,
    SequentialSampler,
    TensorDataset,
)

__all__ = ["GATHER_BYTES", "TensorBatches", "batched", "index_tensor_batches", "tensor_loaders"]


class TensorBatches(TensorDataset):
    """A ``TensorDataset`` that hands out whole batches: one ``index_select`` per tensor.

    A ``DataLoader`` calls ``__getitems__`` with a batch's indices (in the sampler's order);
    use it with ``collate_fn=batched`` (what :func:`tensor_loaders` does), which passes the
    ready batch through. ``dataset[i]`` still gives one sample.
    """

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t.index_select(0, index) for t in self.tensors)


class _IndexTensors:
    """A prepared batch sampler that hands each batch's indices over as one tensor.

    Mixed into copies of Accelerate's prepared batch samplers (torch's ``BatchSampler`` on one
    process, Accelerate's ``BatchSamplerShard`` on several) by :func:`index_tensor_batches`.
    The batches hold exactly the indices the original would give, in the same order:

    - the sampler's order is computed as one tensor: Accelerate's seedable sampler and torch's
      sequential sampler, the only ones it is used with (see :func:`index_tensor_batches`), without
      a Python loop per index (a seedable sampler with replacement, or without its generator yet,
      is read to its end: it draws from its own generator only);
    - which positions of that order each batch takes (batching, this rank's share of the
      global batches, ``even_batches``' repeats from the start, ``drop_last``) depends only
      on the order's length, so it is found once per length by running the original batch
      sampler's own code over the positions ``0 .. n - 1``, and kept.

    Each batch is then a slice of ``order[positions]``: no per-index Python work.
    """

    _original: type  # the class this is a copy of: its __iter__ lays out the positions
    _layouts: dict[tuple, tuple[torch.Tensor | None, list[tuple[int, int]]]]

    def _source(self) -> Sampler:
        inner = self.batch_sampler if isinstance(self, BatchSamplerShard) else self
        return inner.sampler

    def _layout(self, n: int) -> tuple[torch.Tensor | None, list[tuple[int, int]]]:
        """(positions of the order this rank takes, or None for all of them in order; each batch's slice)."""
        inner = self.batch_sampler if isinstance(self, BatchSamplerShard) else self
        shard = (
            (self.num_processes, self.process_index, self.split_batches, self.even_batches)
            if isinstance(self, BatchSamplerShard) else ()
        )
        # Everything the layout depends on: Accelerate's join_uneven_inputs changes even_batches mid-run.
        key = (n, inner.batch_size, inner.drop_last, *shard)
        if key not in self._layouts:
            probe = self._original.__new__(self._original)
            probe.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("_original", "_layouts")})
            if isinstance(self, BatchSamplerShard):
                inner = self.batch_sampler
                probe.batch_sampler = BatchSampler(range(n), inner.batch_size, inner.drop_last)
            else:
                probe.sampler = range(n)
            batches = list(self._original.__iter__(probe))
            flat = [p for b in batches for p in b]
            bounds, start = [], 0
            for b in batches:
                bounds.append((start, start + len(b)))
                start += len(b)
            positions = None if flat == list(range(n)) else torch.tensor(flat, dtype=torch.long)
            self._layouts[key] = (positions, bounds)
        return self._layouts[key]

    def epoch_indices(self) -> tuple[torch.Tensor, list[tuple[int, int]], Callable[[], None]]:
        """This rank's indices for one pass, as one tensor; each batch's slice of it; and what to
        call once the pass is read to its end (the seedable sampler then advances its epoch)."""
        sampler = self._source()
        order, advance = _sampler_order(sampler)
        positions, bounds = self._layout(len(order))
        indices = order if positions is None else order[positions]
        return indices, bounds, (lambda: sampler.set_epoch(sampler.epoch + 1)) if advance else _nothing

    def __iter__(self) -> Iterator[torch.Tensor]:
        indices, bounds, finish = self.epoch_indices()
        for start, stop in bounds:
            yield indices[start:stop]
        finish()


class _IndexTensorBatchSampler(_IndexTensors, BatchSampler):
    pass


class _IndexTensorBatchSamplerShard(_IndexTensors, BatchSamplerShard):
    pass


def _nothing() -> None:
    pass


# Rows gathered at once by _TensorBatchLoader: at most this many bytes (or one batch), so a large
# data set is not copied whole per pass.
GATHER_BYTES = 32 * 2**20


class _TensorBatchLoader(DataLoader):
    """The single-process ``DataLoader`` inside a prepared loader over :class:`TensorBatches`,
    iterated without per-batch Python work: the rows of many batches are gathered at once in
    this rank's order (one ``index_select`` per tensor, up to ``GATHER_BYTES``), and each
    batch is a slice of them.

    It does what torch's single-process iterator does that can be seen from outside: it draws
    the same base seed (from the loader's generator, else the global generator), pins the
    memory under the same condition, and gives the same batches (the ``batched`` collation:
    a list of tensors). The batch sampler is an ``_IndexTensors`` copy, read once per pass.
    ``start`` > 0 (a resumed epoch, :mod:`.skipping`): the batches before it are never gathered.
    """

    start = 0

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        # torch's _BaseDataLoaderIter draws this when the iterator is made (not at its first batch):
        # keep the random streams where they were
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        return self._batches()

    def _batches(self) -> Iterator[list[torch.Tensor]]:
        indices, bounds, finish = self.batch_sampler.epoch_indices()
        tensors = self.dataset.tensors
        pin = self.pin_memory and torch.accelerator.is_available() and torch.accelerator.current_accelerator().type != "mps"
        row_bytes = sum(t[:1].numel() * t.element_size() for t in tensors)
        rows = max(1, GATHER_BYTES // max(row_bytes, 1))
        i = self.start
        while i < len(bounds):  # the batches' slices follow each other: bounds[j][0] == bounds[j - 1][1]
            j, first = i + 1, bounds[i][0]
            while j < len(bounds) and bounds[j][1] - first <= rows:
                j += 1
            chunk = [t.index_select(0, indices[first:bounds[j - 1][1]]) for t in tensors]
            if pin:
                chunk = [t.pin_memory() for t in chunk]  # page-locked like torch's per-batch pinning
            for start, stop in bounds[i:j]:
                yield [t[start - first:stop - first] for t in chunk]
            i = j
        finish()


def _sampler_order(sampler: Sampler) -> tuple[torch.Tensor, bool]:
    """The indices ``list(sampler)`` would give, as one int64 tensor; and whether the caller must
    advance a seedable sampler's epoch once done (as it does itself at the end of its iteration).

    Accelerate's seedable sampler (without replacement, on a CPU generator) and torch's sequential
    sampler are computed directly, with the same generator calls; a seedable sampler otherwise is
    read (it draws from its own generator only, so reading the pass at once changes nothing).
    """
    if (type(sampler) is SeedableRandomSampler and not sampler.replacement and sampler.generator is not None
            and sampler.generator.device.type == "cpu"):
        # SeedableRandomSampler.__iter__, then RandomSampler.__iter__ (torch 2.x), in tensor form. Its
        # first pass makes its generator (on torch's default device) itself: that pass is read below.
        generator = sampler.generator
        generator.manual_seed(sampler.epoch + sampler.initial_seed)
        n, k = len(sampler.data_source), sampler.num_samples
        parts = [torch.randperm(n, generator=generator) for _ in range(k // n)]
        parts.append(torch.randperm(n, generator=generator)[: k % n])  # drawn even when empty, as torch does
        parts = [part for part in parts if part.numel()] or parts[-1:]
        return (parts[0] if len(parts) == 1 else torch.cat(parts)), True
    if type(sampler) is SequentialSampler:
        return torch.arange(len(sampler.data_source)), False
    return torch.as_tensor(list(sampler), dtype=torch.long).reshape(-1), False


# Samplers whose whole pass may be read when it starts: they draw from their own generator only.
_PASS_AT_ONCE = (SeedableRandomSampler, SequentialSampler)


def index_tensor_batches(loader: DataLoader) -> DataLoader:
    """Give an Accelerate-prepared loader over :class:`TensorBatches` index tensors instead of index lists.

    The prepared loader (a ``DataLoaderShard``) keeps everything Accelerate does per batch:
    device placement, the end-of-data lookahead and the gradient state (remainder, end of the
    data loader), ``set_epoch``. Inside it, the batch sampler is swapped for a copy that
    computes the pass's indices as one tensor (see ``_IndexTensors``), and the DataLoader for
    one that gathers the rows of many batches at once (``_TensorBatchLoader``: one
    ``index_select`` per tensor and ``GATHER_BYTES``) and hands out slices. Only loaders
    without worker processes, with the ``batched`` collation and Accelerate's seedable or
    torch's sequential sampler take this path; any other loader (a dispatcher, workers, a
    custom collate or sampler) is returned as it is (still exact, only slower).

    Args:
        loader: what ``accelerator.prepare`` returned.

    Returns:
        The same loader object.
    """
    base = getattr(loader, "base_dataloader", None)
    if type(loader) is not DataLoaderShard or type(base) is not DataLoader:
        return loader
    if base.num_workers != 0 or base.collate_fn is not batched or base.timeout:
        return loader
    dataset = base.dataset
    if not isinstance(dataset, TensorBatches) or type(dataset).__getitems__ is not TensorBatches.__getitems__:
        return loader
    batches = base.batch_sampler
    if type(batches) is BatchSamplerShard and type(batches.batch_sampler) is BatchSampler:
        copy_class = _IndexTensorBatchSamplerShard
    elif type(batches) is BatchSampler:
        copy_class = _IndexTensorBatchSampler
    else:
        return loader
    inner = batches.batch_sampler if copy_class is _IndexTensorBatchSamplerShard else batches
    if type(inner.sampler) not in _PASS_AT_ONCE:  # a sampler may draw from the global RNG as it goes
        return loader
    fast = copy_class.__new__(copy_class)
    fast.__dict__.update(batches.__dict__)  # the same sampler object: set_epoch and set_sampler reach it
    fast._original, fast._layouts = type(batches), {}
    # A DataLoader refuses a new batch_sampler once built; this one is Accelerate's own copy, not the user's.
    object.__setattr__(base, "batch_sampler", fast)
    whole = _TensorBatchLoader.__new__(_TensorBatchLoader)
    whole.__dict__.update(base.__dict__)
    loader.base_dataloader = whole
    return loader


def batched(batch: Any) -> Any:
    """The collate function of :class:`TensorBatches`: the batch is already made.

    Samples fetched one by one (a dataset without ``__getitems__``) are stacked as usual.
    """
    if isinstance(batch, tuple) and batch and all(isinstance(t, torch.Tensor) for t in batch):
        return list(batch)
    return torch.utils.data.default_collate(batch)


def tensor_loaders(
    train: Dataset, test: Dataset, *, batch_size: int, shuffle: bool, seed: int, collate_fn: Callable | None = None,
    num_workers: int = 0,
    val: Dataset | None = None,
    persistent_workers: bool = False,
) -> dict[str, DataLoader]:
    """``{"train_loader", "test_loader"}`` over two data sets (and ``"val_loader"`` over ``val``, in
    order like the test's); the training order seeded by ``seed``.

    :class:`TensorBatches` get the batched fast path unless ``collate_fn`` is given (or workers).
    ``persistent_workers`` keeps each loader's workers from one epoch to the next.
    """
    workers = {"num_workers": num_workers, "persistent_workers": persistent_workers and num_workers > 0}
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    pin = torch.cuda.is_available()  # page-locked batches: Accelerate's copy to the GPU need not block

    def collate(data: Dataset) -> Callable | None:
        return collate_fn or (batched if isinstance(data, TensorBatches) else None)

    def in_order(data: Dataset) -> DataLoader:
        return DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate(data), pin_memory=pin,
                          **workers)

    loaders = {
        "train_loader": DataLoader(
            train, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate(train),
            pin_memory=pin, **workers,
        ),
        "test_loader": in_order(test),
    }
    if val is not None:
        loaders["val_loader"] = in_order(val)
    return loaders
