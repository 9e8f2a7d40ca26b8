"""Hugging Face ``datasets`` from local files (needs the ``distlearn[hf]`` extra)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from ..runtime.loader import tensor_loaders
from .checks import check_loader_params, raise_first_problem, resolve_object
from .randomness import Transformed, check_transform
from .splits import split_sizes

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
        transform: Dotted path of ``transform(sample, generator) -> sample`` (a sample is a dict of
            tensors), applied to each training sample with a generator seeded from (``seed``, epoch,
            index): see :mod:`distlearn.data.randomness`. None: none.
        num_workers: Dataloader worker processes (0: load in the training process).
        persistent_workers: Keep the workers from one epoch to the next (needs ``num_workers >= 1``);
            the transform's epoch and the workers' seeds still follow the epoch.
        batch_size, test_size, seed, shuffle: As for ``SklearnDataset``.
        val_size: Hold out this fraction (or count) of the training split as the validation part, seeded by
            ``seed`` (after the test split is held out); None: none.

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
        transform: str | Callable | None = None,
        num_workers: int = 0,
        persistent_workers: bool = False,
        val_size: float | int | None = None,
    ) -> None:
        raise_first_problem("HFDataset", self.check_parameters({
            "data_files": data_files, "format": format, "batch_size": batch_size, "test_size": test_size, "seed": seed,
            "shuffle": shuffle, "transform": transform, "num_workers": num_workers,
            "persistent_workers": persistent_workers, "val_size": val_size}))
        self.transform, self.num_workers = resolve_object(transform, "transform"), num_workers
        self.persistent_workers = persistent_workers
        self.data_files, self.format = data_files, format
        self.columns = None if columns is None else list(columns)
        self.label_column, self.text_column = label_column, text_column
        self.tokenizer_class, self.tokenizer_parameters = tokenizer_class, dict(tokenizer_parameters or {})
        self.tokenizer_path, self.max_length = tokenizer_path, max_length
        self.collate_fn = resolve_object(collate_fn, "collate_fn")
        self.train_split, self.test_split = train_split, test_split
        self.batch_size, self.test_size, self.seed, self.shuffle = batch_size, test_size, seed, shuffle
        self.val_size = val_size
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
        """``{"train_loader", "test_loader"}`` of dict batches, and ``"val_loader"`` with ``val_size``."""
        train, test = self.splits()
        val = None
        if self.val_size is not None:  # the same rows for any process count: a seeded split of the training part
            split_sizes(len(train), self.val_size, "val_size")  # refuses a size that leaves nothing to train on
            held = train.train_test_split(test_size=self.val_size, seed=self.seed, shuffle=True)
            train, val = held["train"], held["test"]
        collate = self.collate_fn
        if collate is None and self.tokenizer is not None:
            transformers = require_hf("transformers")
            collate = transformers.DataCollatorWithPadding(self.tokenizer, return_tensors="pt")
        if self.transform is not None:
            train = Transformed(train, self.transform, self.seed)
        return tensor_loaders(train, test, batch_size=self.batch_size, shuffle=self.shuffle, seed=self.seed,
                              collate_fn=collate, num_workers=self.num_workers, val=val,
                              persistent_workers=self.persistent_workers)

    def __repr__(self) -> str:
        return f"HFDataset(data_files={self.data_files!r})"

    @staticmethod
    def check_parameters(params: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Check parameter values without reading the files (used by config validation)."""
        problems = check_loader_params(params) + check_transform(params)
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
