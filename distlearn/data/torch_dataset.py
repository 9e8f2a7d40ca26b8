"""Any ``torch.utils.data.Dataset`` class by path, with a ``collate_fn`` by path."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..runtime.loader import tensor_loaders
from .checks import check_loader_params, raise_first_problem, resolve_object
from .randomness import Transformed, check_transform
from .splits import split_sizes


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
        transform: Dotted path of (or) ``transform(sample, generator) -> sample``, applied to each
            training sample with a generator seeded from (``seed``, epoch, index): augmentations
            that replay on resume and on any number of processes or workers (see
            :mod:`distlearn.data.randomness`). None: samples as the data set gives them.
        num_workers: Dataloader worker processes (0: load in the training process).
        persistent_workers: Keep the workers from one epoch to the next (needs ``num_workers >= 1``);
            the transform's epoch and the workers' seeds still follow the epoch.
        batch_size, test_size, seed, shuffle, val_size: As for ``SklearnDataset``.
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
        val_size: float | int | None = None,
        transform: str | Callable | None = None,
        num_workers: int = 0,
        persistent_workers: bool = False,
    ) -> None:
        raise_first_problem("TorchDataset", self.check_parameters({
            "dataset_class": dataset_class, "collate_fn": collate_fn, "batch_size": batch_size, "test_size": test_size,
            "seed": seed, "shuffle": shuffle, "val_size": val_size, "transform": transform,
            "num_workers": num_workers, "persistent_workers": persistent_workers}))
        self.dataset_class = resolve_object(dataset_class, "dataset_class")
        self.collate_fn = resolve_object(collate_fn, "collate_fn")
        self.transform, self.num_workers = resolve_object(transform, "transform"), num_workers
        self.persistent_workers = persistent_workers
        self.dataset_parameters = dict(dataset_parameters or {})
        self.test_parameters = None if test_parameters is None else dict(test_parameters)
        self.batch_size, self.test_size, self.seed, self.shuffle = batch_size, test_size, seed, shuffle
        self.val_size = val_size
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
        """``{"train_loader", "test_loader"}``, and ``"val_loader"`` with ``val_size`` (a seeded random
        part of the training set, after the test part is taken)."""
        train = self.dataset
        if self.test_parameters is not None:
            test = self.dataset_class(**self.test_parameters)
        else:
            sizes = split_sizes(len(train), self.test_size)
            train, test = torch.utils.data.random_split(train, sizes, generator=torch.Generator().manual_seed(self.seed))
        val = None
        if self.val_size is not None:
            sizes = split_sizes(len(train), self.val_size, "val_size")
            generator = torch.Generator().manual_seed(self.seed)
            train, val = torch.utils.data.random_split(train, sizes, generator=generator)
        if self.transform is not None:
            train = Transformed(train, self.transform, self.seed)
        return tensor_loaders(train, test, batch_size=self.batch_size, shuffle=self.shuffle, seed=self.seed,
                              collate_fn=self.collate_fn, num_workers=self.num_workers, val=val,
                              persistent_workers=self.persistent_workers)

    def __repr__(self) -> str:
        return f"TorchDataset({self.dataset_class.__qualname__})"

    @staticmethod
    def check_parameters(params: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Check parameter values and import the classes (used by config validation)."""
        problems = check_loader_params(params) + check_transform(params)
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
