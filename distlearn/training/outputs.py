"""Reading batches and model outputs: a batch's rows and structure, the predictions, the model's
own loss, token labels.

Used by :mod:`distlearn.training.batches` (one batch's step) and by the learner.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["batch_rows", "describe", "flat_tokens", "has_loss", "logits_of", "model_loss", "slice_output",
           "slice_rows", "token_labels"]


def describe(batch: Any) -> str:
    """A batch's structure in words: its type, keys or items, and their shapes."""
    def one(item: Any) -> str:
        if isinstance(item, torch.Tensor):
            return f"Tensor{tuple(item.shape)}"
        return type(item).__name__

    if isinstance(batch, Mapping):
        return "a dict {" + ", ".join(f"{k!r}: {one(v)}" for k, v in batch.items()) + "}"
    if isinstance(batch, (tuple, list)):
        return f"a {type(batch).__name__} of {len(batch)} items (" + ", ".join(one(v) for v in batch) + ")"
    return f"a {one(batch)}"


def batch_rows(batch: Any, form: str | None, label_key: str = "labels") -> int:
    """The batch's number of rows: dim 0 of its labels, else of its first tensor (else 1)."""
    if form == "dict":
        first = batch.get(label_key)
        if not isinstance(first, torch.Tensor):
            first = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
    elif form in ("pair", "inputs"):
        first = batch[-1]
    else:
        items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else [batch]
        first = next((v for v in items if isinstance(v, torch.Tensor)), None)
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 1


def slice_rows(batch: Any, n: int) -> Any:
    """The first ``n`` rows of every tensor in the batch (a tuple, list or dict)."""
    if isinstance(batch, Mapping):
        return {k: _head(v, n) for k, v in batch.items()}  # the model is called with **batch: a dict will do
    return type(batch)(_head(v, n) for v in batch)


def _head(value: Any, n: int) -> Any:
    return value[:n] if isinstance(value, torch.Tensor) and value.dim() else value


def slice_output(output: Any, n: int) -> Any:
    """The first ``n`` rows of the output's predictions (the output itself when it is a tensor)."""
    if isinstance(output, torch.Tensor):
        return output[:n]
    return logits_of(output)[:n]


def logits_of(output: Any) -> torch.Tensor:
    """The prediction tensor of a model output: the tensor, ``.logits``, ``["logits"]`` or the first item."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"cannot find the predictions in the model's output ({type(output).__name__}): return a tensor, "
        "an object with .logits, or a dict with 'logits'"
    )


def has_loss(output: Any) -> bool:
    """Whether the model computed its own loss (``output.loss`` or ``output["loss"]``, a tensor)."""
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    return isinstance(loss, torch.Tensor)


def model_loss(output: Any) -> torch.Tensor:
    """The loss a model computed itself: ``output.loss`` or ``output["loss"]``.

    Raises:
        ValueError: the output has no loss (and no loss was configured).
    """
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if not isinstance(loss, torch.Tensor):
        raise ValueError(
            f"the learner has no loss and the model's output ({type(output).__name__}) has no .loss / ['loss']: "
            "pass loss=... or loss_configs, give loss_fn(model, batch), or make the model compute its loss "
            "(for Hugging Face models: pass labels in the batch)"
        )
    return loss


def token_labels(labels: torch.Tensor | None) -> bool:
    """Integer labels with a time axis ``(batch, T, ...)``: the loss is per token."""
    return (
        isinstance(labels, torch.Tensor)
        and labels.dim() >= 2
        and not labels.dtype.is_floating_point
        and not labels.dtype.is_complex
        and labels.dtype != torch.bool
    )


def flat_tokens(loss: Any, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, T, V)`` logits and ``(B, T)`` labels flattened for a class-index loss; others unchanged."""
    if (
        isinstance(loss, (nn.CrossEntropyLoss, nn.NLLLoss))
        and token_labels(target)
        and logits.dim() == target.dim() + 1
        and logits.shape[:-1] == target.shape
    ):
        return logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
    return logits, target

