"""Model outputs and labels as the metrics take them: predictions from scores, and shape checks."""

from __future__ import annotations

from typing import Any

import torch

from ...options import is_int


def _detached(value: Any) -> torch.Tensor:
    return value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def _probabilities(scores: torch.Tensor) -> torch.Tensor:
    """Scores as probabilities: a sigmoid when any score lies outside [0, 1] (torchmetrics' rule).

    Decided on the device (no host sync): ``torch.where`` on a 0-d condition.
    """
    scores = scores if scores.is_floating_point() else scores.to(torch.float32)
    inside = ((scores >= 0) & (scores <= 1)).all()
    return torch.where(inside, scores, scores.sigmoid())


def _classify(y_score: Any, threshold: float) -> torch.Tensor:
    """Class predictions: the argmax of several columns, else one score ``>= threshold``."""
    scores = _detached(y_score)
    if scores.dim() >= 2 and scores.shape[-1] > 1:
        return scores.argmax(-1)
    scores = scores.reshape(scores.shape[:-1] if scores.dim() >= 2 else scores.shape)
    return (_probabilities(scores) >= threshold).long()


def _classify_labels(y_score: Any, threshold: float) -> torch.Tensor:
    """Multilabel predictions: each score (a probability, or a logit) ``>= threshold``, shape kept."""
    return (_probabilities(_detached(y_score)) >= threshold).long()


def _check_num_labels(owner: str, num_labels: Any) -> int | None:
    """``num_labels`` when it is None or an int >= 1; ``owner`` names the metric in the error."""
    if num_labels is not None and (not is_int(num_labels) or num_labels < 1):
        raise ValueError(f"{owner}: num_labels must be an int >= 1 or None, got {num_labels!r}")
    return num_labels


def _label_matrices(
    owner: str, num_labels: int, y_pred: torch.Tensor, y_true: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions and labels as (n, num_labels) matrices, or a clear error."""
    if y_true.dim() != 2 or y_true.shape[1] != num_labels or y_pred.shape != y_true.shape:
        raise ValueError(
            f"{owner}(num_labels={num_labels}): y_true and y_pred (or y_score) must both have shape "
            f"(n, {num_labels}), got {tuple(y_true.shape)} and {tuple(y_pred.shape)}"
        )
    return y_pred, y_true


def _check_same_shape(owner: str, y_pred: torch.Tensor, y_true: torch.Tensor) -> None:
    if y_pred.numel() != y_true.numel():
        raise ValueError(
            f"{owner}: y_pred has {y_pred.numel()} elements (shape {tuple(y_pred.shape)}) but y_true "
            f"has {y_true.numel()} (shape {tuple(y_true.shape)}); pass one prediction per label"
        )
