"""Perplexity of a language model's token predictions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...accumulators.protocol import SUM
from ..base import Metric


class Perplexity(Metric):
    """exp of the token-weighted mean negative log-likelihood (torchmetrics' ``Perplexity``).

    ``update(y_score=logits, y_true=tokens)`` with logits of shape
    (..., vocabulary) and tokens of shape (...). Tokens equal to
    ``ignore_index`` count for nothing (a mask on the device: no host sync).
    The log-softmax runs in float32 (float64 for float64 logits); the sum is float64.
    """

    name = "perplexity"
    higher_is_better = False
    _reductions = {"nll": SUM, "tokens": SUM}

    def __init__(self, ignore_index: int | None = None) -> None:
        self.ignore_index = ignore_index
        super().__init__()

    def _accumulate(self, states, y_pred, y_true) -> None:
        if y_pred.dim() < 2 or y_pred.shape[:-1] != y_true.shape:
            raise ValueError(
                f"Perplexity: y_score must have shape (..., vocabulary) over y_true's shape {tuple(y_true.shape)}, "
                f"got {tuple(y_pred.shape)}"
            )
        logits = y_pred.reshape(-1, y_pred.shape[-1])
        logits = logits if logits.dtype == torch.float64 else logits.float()
        target = y_true.reshape(-1).long()
        keep = target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        nll = F.cross_entropy(logits, torch.where(keep, target, 0), reduction="none")
        states["nll"] += torch.where(keep, nll.to(torch.float64), 0.0).sum()
        states["tokens"] += keep.sum()

    def _compute(self, states):
        return (states["nll"] / states["tokens"]).exp()

    def _batch_config(self) -> tuple:
        return ()

    def _empty_mask(self, states):
        return states["tokens"] == 0
