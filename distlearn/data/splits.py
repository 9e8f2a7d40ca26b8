"""Splitting arrays into a training and a test part, and wrapping them into loaders."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..runtime.loader import TensorBatches, tensor_loaders


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
    parts = split_parts(x, y, task=task, test_size=test_size, seed=seed, standardize=standardize, stratify=stratify)
    return parts["train"][0], parts["test"][0], parts["train"][1], parts["test"][1]


def split_parts(
    x: np.ndarray,
    y: np.ndarray,
    *,
    task: str,
    test_size: float | int = 0.2,
    val_size: float | int | None = None,
    seed: int = 0,
    standardize: bool = True,
    stratify: bool = True,
    test: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (x, y), "test": (x, y)}``, with ``"val"`` when ``val_size`` is set, as loaders serve them.

    The test part is held out first (the same rows with or without ``val_size``), then ``val_size``
    of the remaining training rows (a fraction, or a count), with the same seed and stratification.
    Features are standardised with the final training part's statistics only (see ``split_arrays``).

    Args:
        test: The data set's own test part (raw): no test split then.
    """
    if test is None:
        x, x_test, y, y_test = _hold_out(x, y, test_size, seed, stratify and task == "classification", "test_size")
    else:
        x_test, y_test = test
    parts = {"train": (x, y), "test": (x_test, y_test)}
    if val_size is not None:
        x, x_val, y, y_val = _hold_out(x, y, val_size, seed, stratify and task == "classification", "val_size")
        parts = {"train": (x, y), "val": (x_val, y_val), "test": (x_test, y_test)}
    return _served(parts, task, standardize)


def _hold_out(x: np.ndarray, y: np.ndarray, size: float | int, seed: int, stratify: bool,
              key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_kept, x_held, y_kept, y_held)``: ``size`` of the rows held out, seeded (and stratified)."""
    from sklearn.model_selection import train_test_split

    split_sizes(len(x), size, key)  # a clear error before sklearn's
    return train_test_split(x, y, test_size=size, random_state=seed, shuffle=True, stratify=y if stratify else None)


def _served(parts: dict[str, tuple[np.ndarray, np.ndarray]], task: str,
            standardize: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every part standardised with the ``"train"`` part's statistics, features float32, labels by task."""
    mean, std = 0.0, 1.0
    if standardize:
        mean = parts["train"][0].mean(axis=0)
        std = parts["train"][0].std(axis=0)
        std[std == 0] = 1.0  # constant on the training part (e.g. digits' border pixels)
    out = {}
    for name, (x, y) in parts.items():
        x = ((x - mean) / std if standardize else x).astype(np.float32)
        y = y.astype(np.int64) if task == "classification" else y.astype(np.float32).reshape(-1, 1)
        out[name] = (x, y)
    return out


def make_loaders(
    x_train: np.ndarray,
    x_test: np.ndarray,
    y_train: np.ndarray,
    y_test: np.ndarray,
    *,
    batch_size: int = 64,
    shuffle: bool = True,
    seed: int = 0,
    val: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, DataLoader]:
    """Wrap split arrays into the reference's ``{"train_loader", "test_loader"}`` dict (and
    ``"val_loader"``, in order, when ``val`` gives the validation arrays).

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
    held = None if val is None else TensorBatches(torch.from_numpy(val[0]), torch.from_numpy(val[1]))
    return tensor_loaders(train, test, batch_size=batch_size, shuffle=shuffle, seed=seed, val=held)


def split_sizes(n: int, test_size: float | int, key: str = "test_size") -> tuple[int, int]:
    """``(training, held out)`` sizes of ``n`` samples for ``test_size`` (a fraction, or a count),
    as scikit-learn's ``train_test_split`` makes them.

    Raises:
        ValueError: no sample, or every sample, is left for training, naming ``key``.
    """
    n_test = int(math.ceil(test_size * n)) if isinstance(test_size, float) else int(test_size)
    if not 0 < n_test < n:
        raise ValueError(f"{key}={test_size!r} leaves {n - n_test} of {n} samples for training; lower it")
    return n - n_test, n_test
