"""Tables and arrays: scikit-learn's bundled data sets, a CSV file, ``.npy``/``.npz`` arrays.

Each splits with a fixed seed (stratified for classification), standardises features with
statistics of the training part only, and serves ``(features, labels)`` batches; see
:mod:`distlearn.data` for the shapes and dtypes.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from ..options import did_you_mean
from .checks import check_common, raise_first_problem
from .splits import make_loaders, split_parts

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
        val_size: float | int | None = None,
    ) -> None:
        self.task = task
        self.val_size = val_size
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
        """Return ``(x_train, x_test, y_train, y_test)`` exactly as the loaders serve them (the
        training part without the validation rows when ``val_size`` is set)."""
        parts = self.parts()
        return parts["train"][0], parts["test"][0], parts["train"][1], parts["test"][1]

    def parts(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{"train": (x, y), "test": (x, y)}``, and ``"val"`` with ``val_size``, as the loaders serve them."""
        x, y = self._arrays()
        return split_parts(x, y, task=self.task, test_size=self.test_size, val_size=self.val_size, seed=self.seed,
                           standardize=self.standardize, stratify=self.stratify)

    def load(self) -> dict[str, DataLoader]:
        """Return ``{"train_loader", "test_loader"}`` DataLoaders, and ``"val_loader"`` with ``val_size``."""
        parts = self.parts()
        (x_train, y_train), (x_test, y_test) = parts["train"], parts["test"]
        logger.debug("%r: %d train rows, %d test rows", self, len(x_train), len(x_test))
        return make_loaders(x_train, x_test, y_train, y_test, batch_size=self.batch_size, shuffle=self.shuffle,
                            seed=self.seed, val=parts.get("val"))

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
        val_size: A validation part held out of the training rows (a fraction in (0, 1), or a
            row count), with the same seed and stratification; None: none.

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
        val_size: float | int | None = None,
    ) -> None:
        raise_first_problem("SklearnDataset", self.check_parameters({"name": name, "val_size": val_size}))
        self.name = name
        super().__init__(SKLEARN_DATASETS[name], batch_size, test_size, seed, shuffle, standardize, stratify,
                         val_size)

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
        problems = check_common(params)
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
        batch_size, test_size, seed, shuffle, standardize, stratify, val_size: As for
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
        val_size: float | int | None = None,
    ) -> None:
        raise_first_problem("CSVDataset", self.check_parameters({"task": task, "val_size": val_size}))
        self.path = Path(path)
        self.target = target
        self.features = None if features is None else list(features)
        self.delimiter = delimiter
        super().__init__(task, batch_size, test_size, seed, shuffle, standardize, stratify, val_size)

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
        problems = _check_with_task(params)
        path = params.get("path")
        if isinstance(path, (str, Path)) and not Path(path).is_file():
            problems.append(
                ("path", f"no file {str(path)!r} (relative paths are read from the current directory {Path.cwd()})")
            )
        return problems

def _check_with_task(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """:func:`check_common`, and ``task`` one of ``TASKS`` (the sets that take a task)."""
    problems = check_common(params)
    if "task" in params and params["task"] not in TASKS:
        problems.append(("task", f"expected one of {list(TASKS)}, got {params['task']!r}"))
    return problems


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



class NumpyDataset(_TabularData):
    """Arrays from a ``.npz`` file (or two ``.npy`` files), split and standardised like the tables.

    Features may have any shape ``(n, ...)`` (standardised per position). A ``.npz`` holding
    ``{x_key}_test`` and ``{y_key}_test`` arrays brings its own test part (no split then).

    Args:
        path: A ``.npz`` file with arrays ``x_key`` and ``y_key``, or a ``.npy`` file of features.
        y_path: The ``.npy`` file of targets when ``path`` is a ``.npy``.
        x_key, y_key: Array names in the ``.npz``.
        task: ``"classification"`` or ``"regression"``.
        batch_size, test_size, seed, shuffle, standardize, stratify, val_size: As for ``SklearnDataset``.

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
        val_size: float | int | None = None,
    ) -> None:
        raise_first_problem("NumpyDataset", self.check_parameters({"path": path, "y_path": y_path, "task": task,
                                                                   "val_size": val_size}))
        self.path, self.y_path = Path(path), None if y_path is None else Path(y_path)
        self.x_key, self.y_key = x_key, y_key
        self._test: tuple[np.ndarray, np.ndarray] | None = None
        super().__init__(task, batch_size, test_size, seed, shuffle, standardize, stratify, val_size)

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

    def parts(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """As ``SklearnDataset.parts``: the file's own test part, else a seeded split."""
        x, y = self._arrays()
        if self._test is None:
            return super().parts()
        n = self._n_train
        return split_parts(x[:n], y[:n], task=self.task, val_size=self.val_size, seed=self.seed,
                           standardize=self.standardize, stratify=self.stratify, test=(x[n:], y[n:]))

    def __repr__(self) -> str:
        return f"NumpyDataset(path={str(self.path)!r}, seed={self.seed})"

    @staticmethod
    def check_parameters(params: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Check parameter values without reading the files (used by config validation)."""
        problems = _check_with_task(params)
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
