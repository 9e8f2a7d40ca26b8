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
    from sklearn.model_selection import train_test_split

    strat = y if (stratify and task == "classification") else None
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, shuffle=True, stratify=strat
    )
    return served_arrays(x_train, x_test, y_train, y_test, task=task, standardize=standardize)


def served_arrays(
    x_train: np.ndarray, x_test: np.ndarray, y_train: np.ndarray, y_test: np.ndarray, *, task: str, standardize: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split parts as the loaders serve them: features standardised with the training part's
    statistics (``standardize``) and float32; labels as ``task`` wants them (see ``split_arrays``)."""
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


def split_sizes(n: int, test_size: float | int) -> tuple[int, int]:
    """``(training, test)`` sizes of ``n`` samples for ``test_size`` (a fraction, or a count).

    Raises:
        ValueError: no sample, or every sample, is left for training.
    """
    n_test = int(math.ceil(test_size * n)) if isinstance(test_size, float) else int(test_size)
    if not 0 < n_test < n:
        raise ValueError(f"test_size={test_size!r} leaves {n - n_test} of {n} samples for training; lower it")
    return n - n_test, n_test
