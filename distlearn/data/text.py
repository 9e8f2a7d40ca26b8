"""Text: a character-level language-modelling set over a text file (by default Python's help texts)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..runtime.loader import TensorBatches, tensor_loaders
from .checks import check_loader_params, raise_first_problem

# How TextDataset hands out a window (the one owner of the allowed values): "tuple" gives
# (inputs, next-character labels); "dict" gives Hugging Face's causal-LM form, {"input_ids": window,
# "labels": window}, for a model that shifts the labels itself.
BATCH_FORMATS = ("tuple", "dict")


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

    With ``batch_format="dict"`` a batch is ``{"input_ids": w, "labels": w}`` instead, ``w``
    the whole windows ``(batch, block_size + 1)``: Hugging Face causal language models
    (``distlearn.models.HFModel`` around ``GPT2LMHeadModel``) shift the labels themselves, so
    they get the same window twice and predict the same ``block_size`` characters from the
    same context as the tuple form. Train them with the learner's ``label_shift=1`` (the
    first character of each window is no target) and ``n_positions >= block_size + 1``.

    Args:
        path: A UTF-8 text file; None (default): Python's own help texts (no download).
        block_size: Characters of context per window.
        stride: Characters between window starts (default ``block_size``: no overlap).
        batch_size: Windows per batch (per process).
        test_size: Fraction of the text (from its end) for testing, in (0, 1).
        val_size: Fraction of the training text (from its end, just before the test part) for
            validation, in (0, 1); None: none. The parts never share a character.
        seed: Seed of the training order.
        shuffle: Shuffle the training windows every epoch.
        max_chars: Use only the first this many characters (small runs); None for all.
        batch_format: ``"tuple"`` (default) or ``"dict"`` (see above; ``BATCH_FORMATS``).

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
        batch_format: str = "tuple",
        val_size: float | None = None,
    ) -> None:
        raise_first_problem("TextDataset", self.check_parameters({
            "path": path, "block_size": block_size, "stride": stride, "batch_size": batch_size, "test_size": test_size,
            "seed": seed, "shuffle": shuffle, "max_chars": max_chars, "batch_format": batch_format,
            "val_size": val_size}))
        self.path = None if path is None else Path(path)
        self.block_size, self.stride = block_size, stride or block_size
        self.batch_size, self.test_size, self.seed, self.shuffle = batch_size, test_size, seed, shuffle
        self.max_chars, self.batch_format, self.val_size = max_chars, batch_format, val_size
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
        """The training and test parts of the text as character ids (training without the validation part)."""
        named = self.named_parts()
        return named["train"], named["test"]

    def named_parts(self) -> dict[str, torch.Tensor]:
        """``{"train", "test"}`` character ids, and ``"val"`` with ``val_size``: train | val | test in the text."""
        ids = torch.from_numpy(np.frombuffer(self.text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64))
        ids = torch.as_tensor(np.searchsorted(np.array([ord(c) for c in self.chars]), ids.numpy()))
        cut = int(len(ids) * (1 - self.test_size))
        if self.val_size is None:
            return {"train": ids[:cut], "test": ids[cut:]}
        val_cut = int(cut * (1 - self.val_size))
        return {"train": ids[:val_cut], "val": ids[val_cut:cut], "test": ids[cut:]}

    def whole_windows(self, ids: torch.Tensor) -> torch.Tensor:
        """Every window of ``ids``, ``block_size + 1`` characters each: ``(n, block_size + 1)``."""
        span = self.block_size + 1
        if len(ids) < span:
            raise ValueError(
                f"TextDataset: a part of {len(ids)} characters is shorter than one window ({span}); "
                "lower block_size, test_size or val_size, or use more text"
            )
        return ids.unfold(0, span, self.stride)

    def windows(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, labels)`` of every window of ``ids``: ``(n, block_size)`` each."""
        w = self.whole_windows(ids)
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    def load(self) -> dict[str, DataLoader]:
        """``{"train_loader", "test_loader"}`` (and ``"val_loader"`` with ``val_size``) of
        ``(input_ids, labels)`` batches (fast path), or of ``{"input_ids", "labels"}`` dicts with
        ``batch_format="dict"``."""
        parts = self.named_parts()
        if self.batch_format == "dict":
            sets = {k: TensorBatches(self.whole_windows(part).contiguous()) for k, part in parts.items()}
            collate = causal_lm_batch
        else:
            sets = {k: TensorBatches(*self.windows(part)) for k, part in parts.items()}
            collate = None
        return tensor_loaders(sets["train"], sets["test"], batch_size=self.batch_size, shuffle=self.shuffle,
                              seed=self.seed, collate_fn=collate, val=sets.get("val"))

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
        return (f"TextDataset(path={None if self.path is None else str(self.path)!r}, block_size={self.block_size}"
                + (f", batch_format={self.batch_format!r})" if self.batch_format != "tuple" else ")"))

    @staticmethod
    def check_parameters(params: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Check parameter values without reading the text (used by config validation)."""
        problems = check_loader_params({k: v for k, v in params.items() if k not in ("test_size", "val_size")})
        for key in ("block_size", "stride", "max_chars"):
            value = params.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                problems.append((key, f"expected a positive int{' or null' if key != 'block_size' else ''}, "
                                      f"got {value!r}"))
        for key in ("test_size", "val_size"):
            t = params.get(key)
            if t is not None and not (isinstance(t, float) and 0 < t < 1):
                what = "the training text" if key == "val_size" else "the text"
                problems.append((key, f"expected a fraction of {what} in (0, 1), got {t!r}"))
        form = params.get("batch_format", "tuple")
        if form not in BATCH_FORMATS:
            problems.append(("batch_format", f"expected one of {list(BATCH_FORMATS)}, got {form!r}: 'dict' for "
                                             "models that take dict batches (distlearn.models.HFModel)"))
        path = params.get("path")
        if isinstance(path, (str, Path)) and not Path(path).is_file():
            problems.append(("path", f"no file {str(path)!r} (relative to {Path.cwd()}); null uses Python's "
                                     "own help texts"))
        return problems


def causal_lm_batch(rows: Any) -> dict[str, torch.Tensor]:
    """The collation of ``batch_format="dict"``: whole windows as ``{"input_ids", "labels"}``.

    The labels are a copy of the inputs (not the same tensor), so that a change to one (e.g. a
    collate or loss that masks labels in place) leaves the other alone.
    """
    if isinstance(rows[0], torch.Tensor):  # TensorBatches.__getitems__: the batch's windows at once
        windows = rows[0]
    else:  # samples one by one: (window,) each
        windows = torch.stack([row[0] for row in rows])
    return {"input_ids": windows, "labels": windows.clone()}
