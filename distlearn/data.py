"""Data sets as the reference's dict of loaders: tables, arrays, text, any torch or Hugging Face set.

``SklearnDataset`` serves the data sets scikit-learn ships (no download) and
``CSVDataset`` a user's own table. Both split with a fixed seed (stratified for
classification), standardise features with statistics of the training part only,
and return ``{"train_loader": DataLoader, "test_loader": DataLoader}`` over
``TensorDataset``s that yield ``(features, labels)`` batches:

- features: float32, shape ``(batch, n_features)``;
- classification labels: int64 class indices ``0..n_classes-1``, shape ``(batch,)``,
  what ``nn.CrossEntropyLoss`` expects next to ``(batch, n_classes)`` logits;
- regression targets: float32, shape ``(batch, 1)``, the shape of an MLP with
  ``out_features=1``, so ``nn.MSELoss`` compares element by element (a ``(batch,)``
  target against a ``(batch, 1)`` output would broadcast to ``(batch, batch)``).

``n_features``, ``n_classes`` and ``n_outputs`` size a model before any loader exists
(experiment configs fill ``in_features``/``out_features`` from them).

The training loader shuffles with its own seeded ``torch.Generator``, never the
global RNG, so its batch order is reproducible from ``seed`` alone.

In-memory tensors take a fast path (:class:`TensorBatches`): the loader asks for
a whole batch of indices at once and gets it by one ``index_select`` per tensor,
instead of indexing sample by sample and stacking. Prepared by
:func:`distlearn.accelerator.prepare_loader` (as the learner prepares loaders), it
goes further (:func:`index_tensor_batches`): each pass's indices are computed as
one tensor and the batches are slices of rows gathered at once, with no Python
work per index or per sample. Accelerate's own loader is kept around it (device
placement, the end-of-data lookahead, the gradient state, ``set_epoch``), and the
order (Accelerate's seedable sampler for ``(seed, epoch)``), the sharding across
processes and the padding of the last batch (``even_batches``' repeats from the
start) are exactly those of a plain ``TensorDataset`` loader. Prepared by
``accelerator.prepare`` alone, it gives the same batches on the per-batch path.

Other sources, each with the same ``load()`` and size attributes:

- :class:`NumpyDataset`: ``.npy``/``.npz`` arrays;
- :class:`TextDataset`: a character-level language-modelling set over a text file,
  by default the English help texts that ship with Python (``pydoc_data.topics``);
- :class:`TorchDataset`: any ``torch.utils.data.Dataset`` class by path, with a
  ``collate_fn`` by path;
- :class:`HFDataset`: Hugging Face ``datasets`` from local files (needs the
  ``distlearn[hf]`` extra).
"""

from __future__ import annotations

import csv
import importlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
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

from .options import did_you_mean, is_int

logger = logging.getLogger(__name__)

# scikit-learn's bundled data sets (read from the installed package, no network).
SKLEARN_DATASETS: dict[str, str] = {
    "digits": "classification",
    "iris": "classification",
    "wine": "classification",
    "breast_cancer": "classification",
    "diabetes": "regression",
}
TASKS = ("classification", "regression")


def split_arrays(
    x: np.ndarray,
    y: np.ndarray,
    *,
    task: str,
    test_size: float | int = 0.2,
    seed: int = 0,
    standardize: bool = True,
    stratify: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split into train and test parts, then standardise with the training part's statistics.

    Args:
        x: Features, shape ``(n, n_features)``.
        y: Class indices (classification) or targets (regression), shape ``(n,)``.
        task: ``"classification"`` or ``"regression"``.
        test_size: Fraction in (0, 1) or number of test rows.
        seed: Seed of the split.
        standardize: Scale every feature to zero mean and unit variance on the training
            part; the test part gets the same affine map (so its mean is not forced to 0).
            Constant features are only centred.
        stratify: Keep class proportions in both parts (classification only).

    Returns:
        ``(x_train, x_test, y_train, y_test)``: features float32, labels int64
        ``(n,)`` for classification, float32 ``(n, 1)`` for regression.
    """
    from sklearn.model_selection import train_test_split

    strat = y if (stratify and task == "classification") else None
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, shuffle=True, stratify=strat
    )
    if standardize:
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0)
        std[std == 0] = 1.0  # constant on the training part (e.g. digits' border pixels)
        x_train = (x_train - mean) / std
        x_test = (x_test - mean) / std
    if task == "classification":
        y_train, y_test = y_train.astype(np.int64), y_test.astype(np.int64)
    else:
        y_train = y_train.astype(np.float32).reshape(-1, 1)
        y_test = y_test.astype(np.float32).reshape(-1, 1)
    return x_train.astype(np.float32), x_test.astype(np.float32), y_train, y_test


def make_loaders(
    x_train: np.ndarray,
    x_test: np.ndarray,
    y_train: np.ndarray,
    y_test: np.ndarray,
    *,
    batch_size: int = 64,
    shuffle: bool = True,
    seed: int = 0,
) -> dict[str, DataLoader]:
    """Wrap split arrays into the reference's ``{"train_loader", "test_loader"}`` dict.

    Args:
        x_train, x_test, y_train, y_test: Arrays as returned by ``split_arrays``.
        batch_size: Rows per batch (both loaders; the last batch may be smaller).
        shuffle: Shuffle the training loader every epoch (the test loader never).
        seed: Seed of the training loader's own ``torch.Generator``.

    Returns:
        ``{"train_loader": DataLoader, "test_loader": DataLoader}``.
    """
    train = TensorBatches(torch.from_numpy(x_train), torch.from_numpy(y_train))
    test = TensorBatches(torch.from_numpy(x_test), torch.from_numpy(y_test))
    return tensor_loaders(train, test, batch_size=batch_size, shuffle=shuffle, seed=seed)


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
    """

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
        i = 0
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
    train: Dataset, test: Dataset, *, batch_size: int, shuffle: bool, seed: int, collate_fn: Callable | None = None
) -> dict[str, DataLoader]:
    """``{"train_loader", "test_loader"}`` over two data sets; the training order seeded by ``seed``.

    :class:`TensorBatches` get the batched fast path unless ``collate_fn`` is given.
    """
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    pin = torch.cuda.is_available()  # page-locked batches: Accelerate's copy to the GPU need not block

    def collate(data: Dataset) -> Callable | None:
        return collate_fn or (batched if isinstance(data, TensorBatches) else None)

    return {
        "train_loader": DataLoader(
            train, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate(train), pin_memory=pin
        ),
        "test_loader": DataLoader(test, batch_size=batch_size, shuffle=False, collate_fn=collate(test), pin_memory=pin),
    }


class _TabularData:
    """What ``SklearnDataset`` and ``CSVDataset`` share: split, scale, load, and sizes.

    The raw table is read once, on first use, so building the object (and validating
    its parameters) touches no data.
    """

    def __init__(
        self,
        task: str,
        batch_size: int,
        test_size: float | int,
        seed: int,
        shuffle: bool,
        standardize: bool,
        stratify: bool,
    ) -> None:
        self.task = task
        self.batch_size = batch_size
        self.test_size = test_size
        self.seed = seed
        self.shuffle = shuffle
        self.standardize = standardize
        self.stratify = stratify
        self._raw: tuple[np.ndarray, np.ndarray] | None = None
        self.classes: np.ndarray | None = None  # original labels, index i = class i

    def _read(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._raw is None:
            x, y = self._read()
            if self.task == "classification":
                # Class indices 0..K-1 whatever the labels were (strings, 1-based ints, ...).
                self.classes, y = np.unique(y, return_inverse=True)
            self._raw = (np.asarray(x, dtype=np.float64), y)
        return self._raw

    @property
    def n_features(self) -> int:
        """Number of input features (an MLP's ``in_features``)."""
        return int(self._arrays()[0].shape[1])

    @property
    def n_classes(self) -> int | None:
        """Number of classes; ``None`` for regression."""
        if self.task != "classification":
            return None
        self._arrays()
        return len(self.classes)

    @property
    def n_outputs(self) -> int:
        """Model outputs the task needs (an MLP's ``out_features``): ``n_classes``, or 1."""
        return self.n_classes if self.task == "classification" else 1

    def split(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(x_train, x_test, y_train, y_test)`` exactly as the loaders serve them."""
        x, y = self._arrays()
        return split_arrays(
            x,
            y,
            task=self.task,
            test_size=self.test_size,
            seed=self.seed,
            standardize=self.standardize,
            stratify=self.stratify,
        )

    def load(self) -> dict[str, DataLoader]:
        """Return ``{"train_loader": DataLoader, "test_loader": DataLoader}`` (see module doc)."""
        x_train, x_test, y_train, y_test = self.split()
        logger.debug("%r: %d train rows, %d test rows", self, len(x_train), len(x_test))
        return make_loaders(
            x_train,
            x_test,
            y_train,
            y_test,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            seed=self.seed,
        )

    @staticmethod
    def _check_common(params: Mapping[str, Any]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        if "batch_size" in params:
            b = params["batch_size"]
            if isinstance(b, bool) or not isinstance(b, int) or b < 1:
                problems.append(("batch_size", f"expected a positive int, got {b!r}"))
        if "test_size" in params:
            t = params["test_size"]
            fraction = isinstance(t, float) and 0 < t < 1
            count = is_int(t) and t >= 1
            if not (fraction or count):
                problems.append(
                    ("test_size", f"expected a fraction in (0, 1) or a row count >= 1, got {t!r}")
                )
        if "seed" in params:
            s = params["seed"]
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                problems.append(("seed", f"expected an int >= 0, got {s!r}"))
        for key in ("shuffle", "standardize", "stratify"):
            if key in params and not isinstance(params[key], bool):
                problems.append((key, f"expected true or false, got {params[key]!r}"))
        return problems


class SklearnDataset(_TabularData):
    """One of the data sets scikit-learn ships, split and standardised.

    Args:
        name: One of ``SKLEARN_DATASETS``: ``"digits"`` (1797 x 64, 10 classes),
            ``"iris"`` (150 x 4, 3), ``"wine"`` (178 x 13, 3), ``"breast_cancer"``
            (569 x 30, 2) or ``"diabetes"`` (442 x 10, regression).
        batch_size: Rows per batch.
        test_size: Fraction in (0, 1) or number of test rows.
        seed: Seed of the split and of the training loader's shuffle.
        shuffle: Shuffle the training loader every epoch.
        standardize: Standardise features with training-part statistics.
        stratify: Stratified split for classification.

    Raises:
        ValueError: If ``name`` is not a known data set (the message suggests the closest).
    """

    def __init__(
        self,
        name: str = "digits",
        batch_size: int = 64,
        test_size: float | int = 0.2,
        seed: int = 0,
        shuffle: bool = True,
        standardize: bool = True,
        stratify: bool = True,
    ) -> None:
        problems = self.check_parameters({"name": name})
        if problems:
            raise ValueError(f"SklearnDataset: {problems[0][0]}: {problems[0][1]}")
        self.name = name
        super().__init__(SKLEARN_DATASETS[name], batch_size, test_size, seed, shuffle, standardize, stratify)

    def _read(self) -> tuple[np.ndarray, np.ndarray]:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, f"load_{self.name}")()
        return bunch.data, bunch.target

    def __repr__(self) -> str:
        return f"SklearnDataset(name={self.name!r}, seed={self.seed})"

    @staticmethod
    def check_parameters(params: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Check parameter values without reading data (used by config validation).

        Returns:
            A list of ``(parameter name, problem)``; empty when everything is valid.
        """
        problems = _TabularData._check_common(params)
        if "name" in params and params["name"] not in SKLEARN_DATASETS:
            name = params["name"]
            hint = did_you_mean(str(name), list(SKLEARN_DATASETS))
            problems.append(("name", f"expected one of {sorted(SKLEARN_DATASETS)}, got {name!r}{hint}"))
        return problems


class CSVDataset(_TabularData):
    """A user's own table from a CSV file with a header row.

    Every column other than the target (or only ``features``, if given) must be numeric
    with no missing values. Classification labels may be any strings or numbers; they
    become class indices in sorted order (``self.classes`` maps them back).

    Args:
        path: CSV file.
        target: Name of the target column.
        task: ``"classification"`` or ``"regression"`` (not guessed: integer targets
            are common in both).
        features: Feature columns to use; ``None`` for all but the target.
        delimiter: Field separator.
        batch_size, test_size, seed, shuffle, standardize, stratify: As for
            ``SklearnDataset``.

    Raises:
        ValueError: When the file is read (first ``n_features``/``load()``): a column is
            missing, a feature value is not a number, or a value is empty.
    """

    def __init__(
        self,
        path: str | Path,
        target: str,
        task: str = "classification",
        features: Sequence[str] | None = None,
        delimiter: str = ",",
        batch_size: int = 64,
        test_size: float | int = 0.2,
        seed: int = 0,
        shuffle: bool = True,
        standardize: bool = True,
        stratify: bool = True,
    ) -> None:
        problems = self.check_parameters({"task": task})
        if problems:
            raise ValueError(f"CSVDataset: {problems[0][0]}: {problems[0][1]}")
        self.path = Path(path)
        self.target = target
        self.features = None if features is None else list(features)
        self.delimiter = delimiter
        super().__init__(task, batch_size, test_size, seed, shuffle, standardize, stratify)

    def _read(self) -> tuple[np.ndarray, np.ndarray]:
        with self.path.open(newline="") as f:
            rows = list(csv.reader(f, delimiter=self.delimiter))
        if not rows:
            raise ValueError(f"{self.path}: empty file, expected a header row and data rows")
        header, body = [h.strip() for h in rows[0]], rows[1:]
        if not any(cell.strip() for row in body for cell in row):
            raise ValueError(f"{self.path}: a header row and no data rows; add rows of data below the header")
        wanted = self.features if self.features is not None else [h for h in header if h != self.target]
        for column in [self.target, *wanted]:
            if column not in header:
                hint = did_you_mean(column, header)
                raise ValueError(f"{self.path}: no column {column!r} (columns: {header}){hint}")
        t_idx = header.index(self.target)
        f_idx = [header.index(c) for c in wanted]

        x = np.empty((len(body), len(f_idx)), dtype=np.float64)
        y: list[Any] = []
        for r, row in enumerate(body):
            line = r + 2  # 1-based, after the header
            if len(row) != len(header):
                raise ValueError(f"{self.path}, line {line}: {len(row)} fields, expected {len(header)}")
            for j, i in enumerate(f_idx):
                x[r, j] = _parse_number(row[i], self.path, line, header[i])
            label = row[t_idx].strip()
            if label == "":
                raise ValueError(f"{self.path}, line {line}: empty value in target column {self.target!r}")
            y.append(label if self.task == "classification" else _parse_number(label, self.path, line, self.target))
        if self.task == "classification":
            y_arr = _labels_array(y)
        else:
            y_arr = np.asarray(y, dtype=np.float64)
        return x, y_arr

    def __repr__(self) -> str:
        return f"CSVDataset(path={str(self.path)!r}, target={self.target!r}, seed={self.seed})"

    @staticmethod
    def check_parameters(params: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Check parameter values without reading the file (used by config validation).

        Returns:
            A list of ``(parameter name, problem)``; empty when everything is valid.
        """
        problems = _TabularData._check_common(params)
        if "task" in params and params["task"] not in TASKS:
            problems.append(("task", f"expected one of {list(TASKS)}, got {params['task']!r}"))
        path = params.get("path")
        if isinstance(path, (str, Path)) and not Path(path).is_file():
            problems.append(
                ("path", f"no file {str(path)!r} (relative paths are read from the current directory {Path.cwd()})")
            )
        return problems


def load_sklearn(name: str = "digits", **kwargs: Any) -> dict[str, DataLoader]:
    """``SklearnDataset(name, **kwargs).load()``: the reference's dict of loaders."""
    return SklearnDataset(name, **kwargs).load()


def load_csv(path: str | Path, target: str, **kwargs: Any) -> dict[str, DataLoader]:
    """``CSVDataset(path, target, **kwargs).load()``: the reference's dict of loaders."""
    return CSVDataset(path, target, **kwargs).load()


def _parse_number(text: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        what = "empty value" if text.strip() == "" else f"value {text!r} is not a number"
        raise ValueError(f"{path}, line {line}, column {column!r}: {what}") from None
    if not math.isfinite(value):
        raise ValueError(
            f"{path}, line {line}, column {column!r}: value {text.strip()!r} is not a finite number; fill or drop that row"
        )
    return value


def _labels_array(labels: list[str]) -> np.ndarray:
    # Numeric labels sort as numbers (2 < 10), others as strings.
    try:
        numbers = [float(v) for v in labels]
    except ValueError:
        return np.asarray(labels)
    arr = np.asarray(numbers)
    return arr.astype(np.int64) if np.all(arr == np.round(arr)) else arr


# ---------------------------------------------------------------------- #
# Shared by the sources below
# ---------------------------------------------------------------------- #


def resolve_object(path: Any, key: str) -> Any:
    """The object a dotted path names (``package.module.name``); objects pass through.

    Raises:
        ValueError: the path does not name an importable object, naming ``key``.
    """
    if not isinstance(path, str):
        return path
    module_name, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"{key}: cannot import {path!r} ({error}); give a dotted path like 'package.module.name'") \
            from None


def _check_loader_params(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    return _TabularData._check_common({k: v for k, v in params.items() if k in ("batch_size", "test_size", "seed",
                                                                                 "shuffle")})


def _split_sizes(n: int, test_size: float | int) -> tuple[int, int]:
    n_test = int(math.ceil(test_size * n)) if isinstance(test_size, float) else int(test_size)
    if not 0 < n_test < n:
        raise ValueError(f"test_size={test_size!r} leaves {n - n_test} of {n} samples for training; lower it")
    return n - n_test, n_test


# ---------------------------------------------------------------------- #
# Arrays
# ---------------------------------------------------------------------- #


class NumpyDataset(_TabularData):
    """Arrays from a ``.npz`` file (or two ``.npy`` files), split and standardised like the tables.

    Features may have any shape ``(n, ...)`` (standardised per position). A ``.npz`` holding
    ``{x_key}_test`` and ``{y_key}_test`` arrays brings its own test part (no split then).

    Args:
        path: A ``.npz`` file with arrays ``x_key`` and ``y_key``, or a ``.npy`` file of features.
        y_path: The ``.npy`` file of targets when ``path`` is a ``.npy``.
        x_key, y_key: Array names in the ``.npz``.
        task: ``"classification"`` or ``"regression"``.
        batch_size, test_size, seed, shuffle, standardize, stratify: As for ``SklearnDataset``.

    Raises:
        ValueError: When the file is read: a missing array, or features and targets of different lengths.
    """

    def __init__(
        self,
        path: str | Path,
        y_path: str | Path | None = None,
        x_key: str = "x",
        y_key: str = "y",
        task: str = "classification",
        batch_size: int = 64,
        test_size: float | int = 0.2,
        seed: int = 0,
        shuffle: bool = True,
        standardize: bool = True,
        stratify: bool = True,
    ) -> None:
        problems = self.check_parameters({"path": path, "y_path": y_path, "task": task})
        if problems:
            raise ValueError(f"NumpyDataset: {problems[0][0]}: {problems[0][1]}")
        self.path, self.y_path = Path(path), None if y_path is None else Path(y_path)
        self.x_key, self.y_key = x_key, y_key
        self._test: tuple[np.ndarray, np.ndarray] | None = None
        super().__init__(task, batch_size, test_size, seed, shuffle, standardize, stratify)

    def _read(self) -> tuple[np.ndarray, np.ndarray]:
        if self.path.suffix == ".npz":
            with np.load(self.path, allow_pickle=False) as arrays:
                for key in (self.x_key, self.y_key):
                    if key not in arrays:
                        raise ValueError(f"{self.path}: no array {key!r} (arrays: {sorted(arrays)}); set x_key/y_key")
                x, y = arrays[self.x_key], arrays[self.y_key]
                test_keys = (f"{self.x_key}_test", f"{self.y_key}_test")
                if all(k in arrays for k in test_keys):
                    self._test = (arrays[test_keys[0]], arrays[test_keys[1]])
        else:
            x, y = np.load(self.path, allow_pickle=False), np.load(self.y_path, allow_pickle=False)
        if len(x) != len(y):
            raise ValueError(f"{self.path}: {len(x)} feature rows but {len(y)} targets")
        if self._test is not None:  # one label encoding for both parts
            n = len(x)
            x, y = np.concatenate([x, self._test[0]]), np.concatenate([y, self._test[1]])
            self._n_train = n
        return x, y

    def split(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(x_train, x_test, y_train, y_test)``: the file's own test part, else a seeded split."""
        x, y = self._arrays()
        if self._test is None:
            return super().split()
        n = self._n_train
        x_train, x_test = x[:n], x[n:]
        if self.standardize:
            mean, std = x_train.mean(axis=0), x_train.std(axis=0)
            std[std == 0] = 1.0
            x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
        if self.task == "classification":
            y_train, y_test = y[:n].astype(np.int64), y[n:].astype(np.int64)
        else:
            y_train, y_test = y[:n].astype(np.float32).reshape(-1, 1), y[n:].astype(np.float32).reshape(-1, 1)
        return x_train.astype(np.float32), x_test.astype(np.float32), y_train, y_test

    def __repr__(self) -> str:
        return f"NumpyDataset(path={str(self.path)!r}, seed={self.seed})"

    @staticmethod
    def check_parameters(params: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Check parameter values without reading the files (used by config validation)."""
        problems = _TabularData._check_common(params)
        if "task" in params and params["task"] not in TASKS:
            problems.append(("task", f"expected one of {list(TASKS)}, got {params['task']!r}"))
        path, y_path = params.get("path"), params.get("y_path")
        if isinstance(path, (str, Path)):
            if Path(path).suffix not in (".npz", ".npy"):
                problems.append(("path", f"expected a .npz or .npy file, got {str(path)!r}"))
            elif not Path(path).is_file():
                problems.append(("path", f"no file {str(path)!r} (relative to {Path.cwd()})"))
            elif Path(path).suffix == ".npy" and y_path is None:
                problems.append(("y_path", "a .npy path holds the features only: give the targets' .npy as y_path"))
        if isinstance(y_path, (str, Path)) and not Path(y_path).is_file():
            problems.append(("y_path", f"no file {str(y_path)!r} (relative to {Path.cwd()})"))
        return problems


# ---------------------------------------------------------------------- #
# Text
# ---------------------------------------------------------------------- #


def python_help_text() -> str:
    """The English help texts that ship with Python (``pydoc_data.topics``): about 465k characters."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


class TextDataset:
    """A character-level language-modelling set: next-character prediction over a text.

    The text is cut into windows of ``block_size + 1`` characters, every ``stride``
    characters; a window gives the inputs (its first ``block_size`` characters) and the
    labels (the next character at every position). The first ``1 - test_size`` of the
    text makes the training windows and the rest the test windows, so no test
    character is seen in training. Batches are ``(input_ids, labels)``, both int64
    ``(batch, block_size)``: a token loss, weighed by tokens in the learner.

    Args:
        path: A UTF-8 text file; None (default): Python's own help texts (no download).
        block_size: Characters of context per window.
        stride: Characters between window starts (default ``block_size``: no overlap).
        batch_size: Windows per batch (per process).
        test_size: Fraction of the text (from its end) for testing, in (0, 1).
        seed: Seed of the training order.
        shuffle: Shuffle the training windows every epoch.
        max_chars: Use only the first this many characters (small runs); None for all.

    Attributes:
        vocab_size: Number of distinct characters (the model's ``vocab_size``).
        n_classes, n_outputs: The same (for metrics' ``num_classes: auto``).
    """

    def __init__(
        self,
        path: str | Path | None = None,
        block_size: int = 64,
        stride: int | None = None,
        batch_size: int = 32,
        test_size: float = 0.1,
        seed: int = 0,
        shuffle: bool = True,
        max_chars: int | None = None,
    ) -> None:
        problems = self.check_parameters({"path": path, "block_size": block_size, "stride": stride,
                                          "batch_size": batch_size, "test_size": test_size, "seed": seed,
                                          "shuffle": shuffle, "max_chars": max_chars})
        if problems:
            raise ValueError(f"TextDataset: {problems[0][0]}: {problems[0][1]}")
        self.path = None if path is None else Path(path)
        self.block_size, self.stride = block_size, stride or block_size
        self.batch_size, self.test_size, self.seed, self.shuffle = batch_size, test_size, seed, shuffle
        self.max_chars = max_chars
        self._text: str | None = None
        self.chars: list[str] = []

    @property
    def text(self) -> str:
        """The text, read once."""
        if self._text is None:
            text = python_help_text() if self.path is None else self.path.read_text(encoding="utf-8")
            self._text = text[: self.max_chars] if self.max_chars else text
            self.chars = sorted(set(self._text))
            self._index = {c: i for i, c in enumerate(self.chars)}
        return self._text

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters in the text."""
        self.text  # noqa: B018 (reads it)
        return len(self.chars)

    n_classes = n_outputs = vocab_size
    n_features = None

    def encode(self, text: str) -> torch.Tensor:
        """Character ids of ``text`` (int64)."""
        self.text  # noqa: B018
        return torch.tensor([self._index[c] for c in text], dtype=torch.long)

    def decode(self, ids: Any) -> str:
        """The text of character ids."""
        self.text  # noqa: B018
        return "".join(self.chars[int(i)] for i in ids)

    def parts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training and test parts of the text as character ids."""
        ids = torch.from_numpy(np.frombuffer(self.text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64))
        ids = torch.as_tensor(np.searchsorted(np.array([ord(c) for c in self.chars]), ids.numpy()))
        cut = int(len(ids) * (1 - self.test_size))
        return ids[:cut], ids[cut:]

    def windows(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, labels)`` of every window of ``ids``: ``(n, block_size)`` each."""
        span = self.block_size + 1
        if len(ids) < span:
            raise ValueError(
                f"TextDataset: a part of {len(ids)} characters is shorter than one window ({span}); "
                "lower block_size or test_size, or use more text"
            )
        w = ids.unfold(0, span, self.stride)
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    def load(self) -> dict[str, DataLoader]:
        """``{"train_loader", "test_loader"}`` of ``(input_ids, labels)`` batches (fast path)."""
        train, test = self.parts()
        return tensor_loaders(TensorBatches(*self.windows(train)), TensorBatches(*self.windows(test)),
                              batch_size=self.batch_size, shuffle=self.shuffle, seed=self.seed)

    def unigram_loss(self) -> float:
        """Per-character loss (nats) on the test part of a model that knows only the training
        part's character frequencies (add-one smoothed): the baseline a language model must beat.
        """
        train, test = self.parts()
        counts = torch.bincount(train, minlength=self.vocab_size).double() + 1
        log_p = torch.log(counts / counts.sum())
        _, labels = self.windows(test)
        return float(-log_p[labels].mean())

    def __repr__(self) -> str:
        return f"TextDataset(path={None if self.path is None else str(self.path)!r}, block_size={self.block_size})"

    @staticmethod
    def check_parameters(params: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Check parameter values without reading the text (used by config validation)."""
        problems = _check_loader_params({k: v for k, v in params.items() if k != "test_size"})
        for key in ("block_size", "stride", "max_chars"):
            value = params.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                problems.append((key, f"expected a positive int{' or null' if key != 'block_size' else ''}, "
                                      f"got {value!r}"))
        t = params.get("test_size")
        if t is not None and not (isinstance(t, float) and 0 < t < 1):
            problems.append(("test_size", f"expected a fraction of the text in (0, 1), got {t!r}"))
        path = params.get("path")
        if isinstance(path, (str, Path)) and not Path(path).is_file():
            problems.append(("path", f"no file {str(path)!r} (relative to {Path.cwd()}); null uses Python's "
                                     "own help texts"))
        return problems


# ---------------------------------------------------------------------- #
# Any torch Dataset
# ---------------------------------------------------------------------- #


class TorchDataset:
    """Any ``torch.utils.data.Dataset`` class, by path, with an optional ``collate_fn`` by path.

    The training set is ``dataset_class(**dataset_parameters)``; the test set is
    ``dataset_class(**test_parameters)`` when given, else a seeded random ``test_size``
    part of the training set. Sizes (``n_features``, ``n_classes``, ``n_outputs``) are
    read from the data set's attributes of those names when it has them.

    Args:
        dataset_class: Dotted path of the class (or the class).
        dataset_parameters: Its keyword arguments.
        test_parameters: Keyword arguments of the test set (None: split the training set).
        collate_fn: Dotted path of a collate function (or one); None: torch's default.
        batch_size, test_size, seed, shuffle: As for ``SklearnDataset``.
    """

    def __init__(
        self,
        dataset_class: str | type,
        dataset_parameters: Mapping[str, Any] | None = None,
        test_parameters: Mapping[str, Any] | None = None,
        collate_fn: str | Callable | None = None,
        batch_size: int = 64,
        test_size: float | int = 0.2,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        problems = self.check_parameters({"dataset_class": dataset_class, "collate_fn": collate_fn,
                                          "batch_size": batch_size, "test_size": test_size, "seed": seed,
                                          "shuffle": shuffle})
        if problems:
            raise ValueError(f"TorchDataset: {problems[0][0]}: {problems[0][1]}")
        self.dataset_class = resolve_object(dataset_class, "dataset_class")
        self.collate_fn = resolve_object(collate_fn, "collate_fn")
        self.dataset_parameters = dict(dataset_parameters or {})
        self.test_parameters = None if test_parameters is None else dict(test_parameters)
        self.batch_size, self.test_size, self.seed, self.shuffle = batch_size, test_size, seed, shuffle
        self._train: Dataset | None = None

    @property
    def dataset(self) -> Dataset:
        """The training data set (built once)."""
        if self._train is None:
            self._train = self.dataset_class(**self.dataset_parameters)
        return self._train

    @property
    def n_features(self) -> int | None:
        """The data set's ``n_features`` attribute, if it has one."""
        return getattr(self.dataset, "n_features", None)

    @property
    def n_classes(self) -> int | None:
        """The data set's ``n_classes`` attribute, if it has one."""
        return getattr(self.dataset, "n_classes", None)

    @property
    def n_outputs(self) -> int | None:
        """The data set's ``n_outputs`` attribute, else ``n_classes``."""
        return getattr(self.dataset, "n_outputs", None) or self.n_classes

    @property
    def vocab_size(self) -> int | None:
        """The data set's ``vocab_size`` attribute, if it has one."""
        return getattr(self.dataset, "vocab_size", None)

    def load(self) -> dict[str, DataLoader]:
        """``{"train_loader", "test_loader"}``."""
        train = self.dataset
        if self.test_parameters is not None:
            test = self.dataset_class(**self.test_parameters)
        else:
            sizes = _split_sizes(len(train), self.test_size)
            train, test = torch.utils.data.random_split(train, sizes, generator=torch.Generator().manual_seed(self.seed))
        return tensor_loaders(train, test, batch_size=self.batch_size, shuffle=self.shuffle, seed=self.seed,
                              collate_fn=self.collate_fn)

    def __repr__(self) -> str:
        return f"TorchDataset({self.dataset_class.__qualname__})"

    @staticmethod
    def check_parameters(params: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Check parameter values and import the classes (used by config validation)."""
        problems = _check_loader_params(params)
        for key in ("dataset_class", "collate_fn"):
            if params.get(key) is not None:
                try:
                    obj = resolve_object(params[key], key)
                except ValueError as error:
                    problems.append((key, str(error).split(": ", 1)[1]))
                    continue
                if key == "dataset_class" and not (isinstance(obj, type) and issubclass(obj, Dataset)):
                    problems.append((key, f"{params[key]!r} is not a torch.utils.data.Dataset class"))
                if key == "collate_fn" and not callable(obj):
                    problems.append((key, f"{params[key]!r} is not callable"))
        return problems


# ---------------------------------------------------------------------- #
# Hugging Face datasets
# ---------------------------------------------------------------------- #

HF_FORMATS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json", ".arrow": "arrow"}


def require_hf(module: str) -> Any:
    """Import ``transformers`` or ``datasets``, or say which extra installs it.

    Raises:
        ImportError: naming ``pip install 'distlearn[hf]'``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{module!r} is not installed ({error}); it comes with the hf extra: pip install 'distlearn[hf]'"
        ) from None


class HFDataset:
    """A Hugging Face ``datasets`` set from local files, as dict batches (no network).

    Reads parquet, csv, json/jsonl or arrow files (``data_files``: one path, a list, or
    ``{"train": ..., "test": ...}``), or a ``save_to_disk`` folder. Without a test split,
    ``test_size`` of the training split is held out with ``seed``. The label column is
    renamed to ``labels`` (what Hugging Face models take), text can be tokenized by a
    tokenizer built from a class path, and batches are collated by ``collate_fn`` (a path),
    else padded by the tokenizer (``DataCollatorWithPadding``), else torch's default.

    Args:
        data_files: File(s) or a ``{"split": file(s)}`` dict; or a ``save_to_disk`` folder.
        format: ``parquet``, ``csv``, ``json`` or ``arrow``; None: from the file suffix.
        columns: Columns to keep (after tokenizing; the labels are always kept); None: all.
        label_column: The column of labels (renamed to ``labels``); None: no labels.
        text_column: The column the tokenizer reads.
        tokenizer_class: Dotted path of a tokenizer class (e.g.
            ``transformers.PreTrainedTokenizerFast``), built with ``tokenizer_parameters``
            (e.g. ``tokenizer_file``: a local ``tokenizer.json``), or with
            ``from_pretrained(tokenizer_path)`` when ``tokenizer_path`` is given (a local folder).
        tokenizer_parameters: Keyword arguments of the tokenizer.
        tokenizer_path: A local folder for ``from_pretrained`` (no download: ``local_files_only``).
        max_length: Truncate tokenized texts to this many tokens.
        collate_fn: Dotted path of a collate function.
        train_split, test_split: Split names.
        batch_size, test_size, seed, shuffle: As for ``SklearnDataset``.

    Raises:
        ImportError: ``datasets`` (or ``transformers``, for a tokenizer) is missing, naming the extra.
    """

    def __init__(
        self,
        data_files: str | Path | Sequence[str] | Mapping[str, Any],
        format: str | None = None,
        columns: Sequence[str] | None = None,
        label_column: str | None = "label",
        text_column: str = "text",
        tokenizer_class: str | None = None,
        tokenizer_parameters: Mapping[str, Any] | None = None,
        tokenizer_path: str | None = None,
        max_length: int | None = None,
        collate_fn: str | Callable | None = None,
        train_split: str = "train",
        test_split: str = "test",
        batch_size: int = 32,
        test_size: float | int = 0.2,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        problems = self.check_parameters({"data_files": data_files, "format": format, "batch_size": batch_size,
                                          "test_size": test_size, "seed": seed, "shuffle": shuffle})
        if problems:
            raise ValueError(f"HFDataset: {problems[0][0]}: {problems[0][1]}")
        self.data_files, self.format = data_files, format
        self.columns = None if columns is None else list(columns)
        self.label_column, self.text_column = label_column, text_column
        self.tokenizer_class, self.tokenizer_parameters = tokenizer_class, dict(tokenizer_parameters or {})
        self.tokenizer_path, self.max_length = tokenizer_path, max_length
        self.collate_fn = resolve_object(collate_fn, "collate_fn")
        self.train_split, self.test_split = train_split, test_split
        self.batch_size, self.test_size, self.seed, self.shuffle = batch_size, test_size, seed, shuffle
        self._splits: tuple[Any, Any] | None = None
        self.tokenizer: Any = None

    def _read(self) -> Any:
        datasets = require_hf("datasets")
        files = self.data_files
        if isinstance(files, (str, Path)) and Path(files).is_dir():
            return datasets.load_from_disk(str(files))
        fmt = self.format or HF_FORMATS.get(Path(_first_file(files)).suffix)
        if fmt is None:
            raise ValueError(f"HFDataset: cannot tell the format of {files!r}; set format (one of "
                             f"{sorted(set(HF_FORMATS.values()))})")
        if isinstance(files, Mapping):
            files = {k: [str(f) for f in v] if isinstance(v, (list, tuple)) else str(v) for k, v in files.items()}
        elif isinstance(files, (list, tuple)):
            files = [str(f) for f in files]
        else:
            files = str(files)
        return datasets.load_dataset(fmt, data_files=files)

    def splits(self) -> tuple[Any, Any]:
        """``(train, test)`` ``datasets.Dataset``s, tokenized, columns selected, torch-formatted."""
        if self._splits is not None:
            return self._splits
        data = self._read()
        if hasattr(data, "keys"):  # a DatasetDict
            if self.train_split not in data:
                raise ValueError(f"HFDataset: no split {self.train_split!r} (splits: {sorted(data)}); set train_split")
            train = data[self.train_split]
            test = data[self.test_split] if self.test_split in data else None
        else:
            train, test = data, None
        if test is None:
            held = train.train_test_split(test_size=self.test_size, seed=self.seed, shuffle=True)
            train, test = held["train"], held["test"]
        train, test = (self._prepare(part) for part in (train, test))
        self._splits = (train, test)
        return train, test

    def _prepare(self, part: Any) -> Any:
        tokenizer = self._tokenizer()
        if tokenizer is not None:
            if self.text_column not in part.column_names:
                raise ValueError(f"HFDataset: no text column {self.text_column!r} (columns: {part.column_names})")
            kwargs = {"truncation": True, "max_length": self.max_length} if self.max_length else {}
            part = part.map(lambda rows: tokenizer(rows[self.text_column], **kwargs), batched=True)
            part = part.remove_columns([self.text_column])
        if self.label_column is not None:
            if self.label_column not in part.column_names:
                raise ValueError(f"HFDataset: no label column {self.label_column!r} (columns: {part.column_names}); "
                                 "set label_column (null: no labels)")
            if self.label_column != "labels":
                part = part.rename_column(self.label_column, "labels")
        if self.columns is not None:
            keep = set(self.columns) | ({"labels"} if self.label_column is not None else set())
            missing = keep - set(part.column_names)
            if missing:
                raise ValueError(f"HFDataset: columns {sorted(missing)} not found (columns: {part.column_names})")
            part = part.remove_columns([c for c in part.column_names if c not in keep])
        return part.with_format("torch")

    def _tokenizer(self) -> Any:
        if self.tokenizer is None and self.tokenizer_class is not None:
            cls = resolve_object(self.tokenizer_class, "tokenizer_class")
            if self.tokenizer_path is not None:
                self.tokenizer = cls.from_pretrained(self.tokenizer_path, local_files_only=True,
                                                     **self.tokenizer_parameters)
            else:
                self.tokenizer = cls(**self.tokenizer_parameters)
        return self.tokenizer

    @property
    def n_classes(self) -> int | None:
        """Number of classes of the labels (a ``ClassLabel`` column, else integer labels 0..max)."""
        if self.label_column is None:
            return None
        train, test = self.splits()
        feature = train.features.get("labels")
        if getattr(feature, "num_classes", None) is not None:
            return int(feature.num_classes)
        labels = np.concatenate([np.asarray(part.with_format(None).to_dict()["labels"]).reshape(-1)
                                 for part in (train, test)])
        if not np.issubdtype(labels.dtype, np.integer):
            return None
        return int(labels.max()) + 1

    n_outputs = n_classes
    n_features = None

    @property
    def vocab_size(self) -> int | None:
        """The tokenizer's vocabulary size (None without a tokenizer)."""
        tokenizer = self._tokenizer()
        return None if tokenizer is None else len(tokenizer)

    def load(self) -> dict[str, DataLoader]:
        """``{"train_loader", "test_loader"}`` of dict batches."""
        train, test = self.splits()
        collate = self.collate_fn
        if collate is None and self.tokenizer is not None:
            transformers = require_hf("transformers")
            collate = transformers.DataCollatorWithPadding(self.tokenizer, return_tensors="pt")
        return tensor_loaders(train, test, batch_size=self.batch_size, shuffle=self.shuffle, seed=self.seed,
                              collate_fn=collate)

    def __repr__(self) -> str:
        return f"HFDataset(data_files={self.data_files!r})"

    @staticmethod
    def check_parameters(params: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Check parameter values without reading the files (used by config validation)."""
        problems = _check_loader_params(params)
        fmt = params.get("format")
        if fmt is not None and fmt not in set(HF_FORMATS.values()):
            problems.append(("format", f"expected one of {sorted(set(HF_FORMATS.values()))} or null, got {fmt!r}"))
        files = params.get("data_files")
        if files is not None:
            paths = list(files.values()) if isinstance(files, Mapping) else files
            paths = paths if isinstance(paths, (list, tuple)) else [paths]
            flat = [p for item in paths for p in (item if isinstance(item, (list, tuple)) else [item])]
            missing = [str(p) for p in flat if isinstance(p, (str, Path)) and not Path(p).exists()]
            if missing:
                problems.append(("data_files", f"no file or folder {missing[0]!r} (relative to {Path.cwd()})"))
        return problems


def _first_file(files: Any) -> str:
    if isinstance(files, Mapping):
        files = next(iter(files.values()))
    if isinstance(files, (list, tuple)):
        files = files[0]
    return str(files)
