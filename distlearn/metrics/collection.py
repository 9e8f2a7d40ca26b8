"""Several metrics at once (:class:`Metrics`), what counts as a metric, and one-shot values by name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..accumulators.protocol import Accumulator
from .base import Metric
from .classification import AUROC, F1, Accuracy, AveragePrecision, Precision, Recall
from .classification.ranking import _Ranked
from .regression import MAE, MSE, R2, RMSE


class Metrics(Accumulator):
    """Several metrics updated together and reduced in the same ``calculate()`` as everything else.

    ``calculate()`` (or a ``calculate()`` of a list/dict containing it) returns
    ``{key: value}``. The primary metric gives the collection its ``name``,
    ``higher_is_better`` and :meth:`predict`.

    Args:
        metrics: a dict ``{key: metric}`` (plain accumulators such as ``Mean`` may
            ride along), or a list of metrics (keys are their names).
        primary: the key of the primary metric; the first when None.

    Raises:
        ValueError: an empty collection, duplicate names in a list, an unknown primary.
        TypeError: a member that is not a metric.
    """

    def __init__(self, metrics: Mapping[str, Any] | Sequence[Any], primary: str | None = None) -> None:
        if isinstance(metrics, Mapping):
            members = dict(metrics)
        else:
            members = {}
            for metric in metrics:
                key = getattr(metric, "name", None)
                if key in members:
                    raise ValueError(f"Metrics: two metrics named {key!r} in the list; pass a dict to name them")
                members[key] = metric
        if not members:
            raise ValueError("Metrics: give at least one metric")
        for key, metric in members.items():
            if not isinstance(key, str) or not isinstance(metric, Accumulator):
                raise TypeError(
                    f"Metrics: {key!r} must name a distlearn metric or accumulator, got {type(metric).__name__}"
                )
            if isinstance(metric, Metrics):
                raise TypeError(f"Metrics: {key!r} is itself a Metrics; flatten it into one collection")
        if primary is None:
            primary = next(iter(members))
        if primary not in members:
            raise ValueError(f"Metrics: primary {primary!r} is not one of {list(members)}")
        if not hasattr(members[primary], "higher_is_better"):
            raise ValueError(f"Metrics: the primary {primary!r} must be a metric (it has no higher_is_better)")
        self.metrics = members
        self.primary = primary

    @property
    def name(self) -> str:
        """The primary metric's key (records and the console show every key)."""
        return self.primary

    @property
    def higher_is_better(self) -> bool:
        return bool(self.metrics[self.primary].higher_is_better)

    @property
    def scalar(self) -> bool:
        """Whether the primary metric's value is one number (see ``Metric.gives_scalar``)."""
        return bool(getattr(self.metrics[self.primary], "scalar", True))

    def __getitem__(self, key: str) -> Any:
        return self.metrics[key]

    def predict(self, y_score: Any) -> torch.Tensor:
        """The primary metric's predictions."""
        return self.metrics[self.primary].predict(y_score)

    def update(self, y_pred: Any = None, y_true: Any = None, y_score: Any = None) -> None:
        """Update every metric with the batch (each derives its own predictions from ``y_score``)."""
        for metric in self.metrics.values():
            metric.update(y_pred=y_pred, y_true=y_true, y_score=y_score)

    def value(self) -> dict[str, Any]:
        return {key: metric.value() for key, metric in self.metrics.items()}

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()

    def state_dict(self) -> dict[str, Any]:
        return {key: metric.state_dict() for key, metric in self.metrics.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        missing = set(self.metrics) - set(state_dict)
        if missing:
            raise KeyError(f"Metrics.load_state_dict: missing metrics {sorted(missing)}")
        for key, metric in self.metrics.items():
            metric.load_state_dict(state_dict[key])

    def evaluate(self, y_true: Any = None, y_pred: Any = None, y_score: Any = None) -> dict[str, Any]:
        """One-shot values on the given data: local, no collective."""
        return {
            key: metric.evaluate(y_true=y_true, y_pred=y_pred, y_score=y_score) for key, metric in self.metrics.items()
        }

    def _members(self) -> Mapping[str, Accumulator]:
        return self.metrics


def is_metric(obj: Any) -> bool:
    """Whether ``obj`` is a distlearn metric or collection the learner can take as ``metric=``.

    True for :class:`Metric` subclasses, the exact ranking metrics (:class:`AUROC`,
    :class:`AveragePrecision`, which gather scores) and :class:`Metrics`.
    """
    return isinstance(obj, (Metric, _Ranked, Metrics))


_BY_NAME: dict[str, Any] = {
    "accuracy": Accuracy,
    "f1": lambda: F1("binary"),
    "f1_micro": lambda: F1("micro"),
    "f1_macro": lambda: F1("macro"),
    "f1_weighted": lambda: F1("weighted"),
    "precision": lambda: Precision("binary"),
    "precision_macro": lambda: Precision("macro"),
    "recall": lambda: Recall("binary"),
    "recall_macro": lambda: Recall("macro"),
    "auroc": AUROC,
    "average_precision": AveragePrecision,
    "mse": MSE,
    "rmse": RMSE,
    "mae": MAE,
    "r2": R2,
}


def evaluate(
    y_true: Any, y_pred: Any = None, y_score: Any = None, metrics: Sequence[str] = ("accuracy",)
) -> dict[str, float]:
    """One-shot values of named metrics on the given data (local, no collective).

    Args:
        y_true: the labels or targets.
        y_pred: predictions; derived from ``y_score`` per metric when ``None``.
        y_score: model outputs (logits, probabilities or regression outputs).
        metrics: names among ``accuracy, f1, f1_micro, f1_macro, f1_weighted, precision,
            precision_macro, recall, recall_macro, auroc, average_precision, mse, rmse, mae, r2``.

    Returns:
        ``{name: value}``.
    """
    unknown = [m for m in metrics if m not in _BY_NAME]
    if unknown:
        raise ValueError(f"evaluate(): unknown metrics {unknown}; choose from {sorted(_BY_NAME)}")
    return {m: _BY_NAME[m]().evaluate(y_true=y_true, y_pred=y_pred, y_score=y_score) for m in metrics}
