"""Confusion counts and the scores read from them (precision, recall, F-beta), as functions.

Multiclass (and binary) tasks count an (n, n) confusion matrix (rows: labels, columns:
predictions); multilabel tasks count true positives, false positives, false negatives and
true negatives per label, a (4, L) matrix. The score functions are written for a leading
batch dimension, so that many metrics of one kind finish in one pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

PerClass = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    # scikit-learn's zero_division default: 0 where the ratio is undefined
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1e-300), 0.0)


def precision(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    """Precision per class from its counts (0 where undefined)."""
    return _ratio(tp, tp + fp)


def recall(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    """Recall per class from its counts (0 where undefined)."""
    return _ratio(tp, tp + fn)


def fbeta(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, beta: float) -> torch.Tensor:
    """F-beta per class from its counts (0 where undefined)."""
    b2 = beta**2
    return _ratio((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp)


def multiclass_confusion_update(
    confusion: torch.Tensor, y_pred: torch.Tensor, y_true: torch.Tensor, grow: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add a batch of class labels and predictions to an (n, n) confusion matrix.

    Args:
        confusion: the float64 matrix, updated in place unless it grows.
        y_pred, y_true: class indices, one prediction per label.
        grow: enlarge the matrix to the largest label seen (a host sync).

    Returns:
        The matrix (a new one when it grew) and the number of labels or predictions outside it.
    """
    y_true, y_pred = y_true.reshape(-1).long(), y_pred.reshape(-1).long()
    n = confusion.shape[0]
    if grow and y_true.numel():
        # Growing needs the largest label on the host: one sync per batch,
        # avoided by passing num_classes.
        needed = int(torch.maximum(y_true.max(), y_pred.max())) + 1
        if needed > n:
            grown = torch.zeros(needed, needed, dtype=torch.float64, device=confusion.device)
            grown[:n, :n] = confusion
            confusion, n = grown, needed
    # Labels outside [0, n) are counted, not indexed (which would land in another cell or
    # fail on one rank only); the metric raises on every rank when the global count is > 0.
    valid = (y_true >= 0) & (y_true < n) & (y_pred >= 0) & (y_pred < n)
    index = torch.where(valid, y_true * n + y_pred, 0)
    confusion.view(-1).index_add_(0, index, valid.to(torch.float64))
    return confusion, (~valid).sum()


def multilabel_stat_scores(y_pred: torch.Tensor, y_true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-label counts of (n, L) 0/1 predictions and labels.

    Returns:
        The (4, L) counts (rows: true positives, false positives, false negatives, true
        negatives) and the number of values other than 0 and 1.
    """
    out_of_range = ((y_true != 0) & (y_true != 1)).sum() + ((y_pred != 0) & (y_pred != 1)).sum()
    t, p = y_true == 1, y_pred == 1
    counts = torch.stack([(t & p).sum(0), (~t & p).sum(0), (t & ~p).sum(0), (~t & ~p).sum(0)])
    return counts, out_of_range


def _class_counts(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tp = confusion.diagonal(dim1=-2, dim2=-1)
    fp = confusion.sum(-2) - tp
    fn = confusion.sum(-1) - tp
    return tp, fp, fn


def binary_scores(confusion: torch.Tensor, pos_label: int, per_class: PerClass) -> torch.Tensor:
    """The score of class ``pos_label`` from (..., n, n) confusion matrices (0 when it is outside them)."""
    if pos_label >= confusion.shape[-1]:
        return torch.zeros(confusion.shape[:-2], dtype=torch.float64, device=confusion.device)
    tp, fp, fn = _class_counts(confusion)
    return per_class(tp[..., pos_label], fp[..., pos_label], fn[..., pos_label])


def multiclass_scores(confusion: torch.Tensor, average: str, per_class: PerClass) -> torch.Tensor:
    """The ``"micro"``, ``"macro"`` or ``"weighted"`` score from (..., n, n) confusion matrices."""
    tp, fp, fn = _class_counts(confusion)
    if average == "micro":
        return per_class(tp.sum(-1), fp.sum(-1), fn.sum(-1))
    # scikit-learn's labels: those that occur in the labels or the predictions
    present = (tp + fp + fn) > 0
    scores = torch.where(present, per_class(tp, fp, fn), 0.0)
    if average == "weighted":
        support = tp + fn
        return (scores * support).sum(-1) / support.sum(-1)
    return scores.sum(-1) / present.sum(-1)


def multilabel_scores(counts: torch.Tensor, average: str, per_class: PerClass) -> torch.Tensor:
    """The ``"micro"``, ``"macro"``, ``"weighted"`` or ``"none"`` (per label) score from (..., 4, L) counts."""
    # scikit-learn on an indicator matrix: every label counts in the macro mean, 0 where undefined
    tp, fp, fn, _ = counts.unbind(-2)
    if average == "micro":
        return per_class(tp.sum(-1), fp.sum(-1), fn.sum(-1))
    scores = per_class(tp, fp, fn)
    if average == "none":
        return scores
    if average == "weighted":
        support = tp + fn
        return _ratio((scores * support).sum(-1), support.sum(-1))
    return scores.mean(-1)
