"""Scores, predictions and metric values: what the training and the test pass share about a metric."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..metrics import Metric, Metrics, is_metric

__all__ = ["default_predict", "fresh_metric", "model_scores", "score_fields"]


def model_scores(loss: Any, output: torch.Tensor) -> torch.Tensor:
    """The scores metrics and ``y_score`` get from model outputs: probabilities for BCEWithLogitsLoss.

    The one place that decides it: metrics threshold 1-D scores at 0.5 (probabilities), so
    logits would be misread; :func:`default_predict` uses the same 0.5 on these scores.
    """
    return torch.sigmoid(output) if isinstance(loss, nn.BCEWithLogitsLoss) else output


def default_predict(loss: Any, y_score: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    """Predictions without a metric: class indices for classification losses (or class-index labels
    when the model computes its loss), else the outputs."""
    classes = loss is None and not y_true.dtype.is_floating_point and y_score.dim() == y_true.dim() + 1
    if isinstance(loss, (nn.CrossEntropyLoss, nn.NLLLoss)) or classes:
        return y_score.argmax(-1)
    if isinstance(loss, nn.BCEWithLogitsLoss):
        return (y_score >= 0.5).long()  # y_score holds probabilities here (see model_scores), as metrics threshold them
    return y_score


def fresh_metric(metric: Any) -> Metric | Metrics | None:
    """A reset copy of the user's metric (theirs is left untouched); a dict or list becomes a :class:`Metrics`.

    Raises:
        TypeError: ``metric`` is not a distlearn metric or a collection of them.
    """
    if metric is None:
        return None
    if isinstance(metric, (Mapping, list, tuple)):
        metric = Metrics(metric)
    if not is_metric(metric):
        raise TypeError(
            "metric must be a distlearn metric (Accuracy(), F1(...), MSE(), AUROC(), ...), a dict or list of them, "
            f"or a distlearn.metrics.Metrics collection; got {type(metric).__name__}"
        )
    fresh = copy.deepcopy(metric)
    fresh.reset()
    return fresh


def score_fields(metric: Any, value: Any, part: str) -> dict[str, Any]:
    """``{part}_score`` (the primary metric's value) and ``{part}_scores`` (every metric's, by name)."""
    if metric is None:
        return {f"{part}_score": None, f"{part}_scores": {}}
    scores = dict(value) if isinstance(metric, Metrics) else {metric.name: value}
    return {f"{part}_score": scores[metric.name], f"{part}_scores": scores}
