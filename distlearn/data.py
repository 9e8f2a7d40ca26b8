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
instead of indexing sample by sample and stacking. The sampler is untouched, so
the order, the sharding across processes and Accelerate's padding of the last
batch are exactly those of a plain ``TensorDataset`` loader, and the loader still
goes through ``accelerator.prepare`` (``set_epoch`` and the seedable sampler work
as before).

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
import difflib
import importlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

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

    def collate(data: Dataset) -> Callable | None:
        return collate_fn or (batched if isinstance(data, TensorBatches) else None)

    return {
        "train_loader": DataLoader(
            train, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate(train)
        ),
        "test_loader": DataLoader(test, batch_size=batch_size, shuffle=False, collate_fn=collate(test)),
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
            count = isinstance(t, int) and not isinstance(t, bool) and t >= 1
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
            close = difflib.get_close_matches(str(name), SKLEARN_DATASETS, n=1)
            hint = f" — did you mean {close[0]!r}?" if close else ""
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
        wanted = self.features if self.features is not None else [h for h in header if h != self.target]
        for column in [self.target, *wanted]:
            if column not in header:
                close = difflib.get_close_matches(column, header, n=1)
                hint = f" — did you mean {close[0]!r}?" if close else ""
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
        return float(text)
    except ValueError:
        what = "empty value" if text.strip() == "" else f"value {text!r} is not a number"
        raise ValueError(f"{path}, line {line}, column {column!r}: {what}") from None


def _labels_array(labels: list[str]) -> np.ndarray:
    # Numeric labels sort as numbers (2 < 10), others as strings.
    try:
        numbers = [float(v) for v in labels]
    except ValueError:
        return np.asarray(labels)
    arr = np.asarray(numbers)
    return arr.astype(np.int64) if np.all(arr == np.round(arr)) else arr
