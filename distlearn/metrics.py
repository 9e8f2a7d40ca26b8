"""Metrics as accumulators of sufficient statistics.

Each metric keeps counts, sums or a confusion matrix in float64 and reduces
them in the same coalesced collective as any other accumulator, so the global
value is exact: N ranks give what one process gives on the same data.

    acc = Accuracy()
    for x, y in loader:
        acc(y_score=model(x), y_true=y)   # local, no collective, no host sync
    acc.calculate()                       # collective: exact global accuracy
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from .accumulators import SUM, TensorAccumulator, _state_device

__all__ = ["F1", "MAE", "MSE", "Accuracy", "Metric", "evaluate"]


class Metric(TensorAccumulator):
    """Base of metrics: fixed-shape float64 states created at construction.

    Calling a metric updates it with a batch and returns the local running
    value (a float64 0-d tensor, no host sync); :meth:`calculate` returns the
    exact global value as a Python float.
    """

    name: ClassVar[str]
    higher_is_better: ClassVar[bool]

    def reset(self) -> None:
        super().reset()
        self._kind = "float64"
        self._states = self._neutral(self._initial_shapes(), torch.device("cpu"))

    def _initial_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: () for name in self._reductions}

    def predict(self, y_score: Any) -> torch.Tensor:
        """Predictions from model outputs (identity unless the metric says otherwise)."""
        return _detached(y_score)

    def update(self, y_pred: Any = None, y_true: Any = None, y_score: Any = None) -> None:
        """Accumulate one batch; ``y_pred`` is derived from ``y_score`` when not given."""
        if y_true is None:
            raise ValueError(f"{type(self).__name__}: y_true is required")
        if y_pred is None:
            if y_score is None:
                raise ValueError(f"{type(self).__name__}: pass y_pred or y_score")
            y_pred = self.predict(y_score)
        y_true, y_pred = _detached(y_true), _detached(y_pred)
        if y_true.device != self._device:  # first batch on a new device: the states follow, once
            self._device = y_true.device
            self._states = {n: s.to(_state_device(self._device)) for n, s in self._states.items()}
        state_device = next(iter(self._states.values())).device
        if y_true.device != state_device or y_pred.device != state_device:
            y_true, y_pred = y_true.to(state_device), y_pred.to(state_device)
        self._accumulate(self._states, y_pred, y_true)

    def _accumulate(self, states: dict[str, torch.Tensor], y_pred: torch.Tensor, y_true: torch.Tensor) -> None:
        raise NotImplementedError

    def _convert_global(self, result: torch.Tensor, kind: str, device: torch.device) -> float:
        return float(result)

    def _empty_value(self) -> float:
        return float("nan")

    def evaluate(self, y_true: Any = None, y_pred: Any = None, y_score: Any = None) -> float:
        """One-shot value on the given data: local, no collective, this metric's state untouched."""
        fresh = copy.copy(self)
        fresh.reset()
        fresh.update(y_pred=y_pred, y_true=y_true, y_score=y_score)
        fresh._check_states(fresh._states)
        return float(fresh._compute(fresh._states))


class Accuracy(Metric):
    """Fraction of predictions equal to the labels (scikit-learn's ``accuracy_score``).

    Args:
        threshold: for 1-D scores, the probability above which the prediction is 1.
    """

    name = "accuracy"
    higher_is_better = True
    _reductions = {"correct": SUM, "total": SUM}

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        super().__init__()

    def predict(self, y_score: Any) -> torch.Tensor:
        return _classify(y_score, self.threshold)

    def _accumulate(self, states, y_pred, y_true) -> None:
        _check_same_shape(self, y_pred, y_true)
        states["correct"] += (y_pred.reshape(-1) == y_true.reshape(-1)).sum()
        states["total"] += y_true.numel()

    def _compute(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return states["correct"] / states["total"]

    def _empty_mask(self, states):
        return states["total"] == 0


class F1(Metric):
    """F1 score from a confusion matrix, as scikit-learn's ``f1_score``.

    Args:
        average: ``"binary"`` (class ``pos_label`` against the rest),
            ``"micro"`` or ``"macro"`` (unweighted mean over the classes that
            occur in the labels or the predictions).
        num_classes: the number of classes; ``None`` grows the matrix with the
            largest label seen (ranks are padded to agree in ``calculate``).
        threshold: for 1-D scores, the probability above which the prediction is 1.
        pos_label: the positive class for ``average="binary"``.
    """

    higher_is_better = True
    _reductions = {"confusion": SUM, "out_of_range": SUM}
    _growable = True

    def __init__(
        self, average: str = "binary", num_classes: int | None = None, threshold: float = 0.5, pos_label: int = 1
    ) -> None:
        if average not in ("binary", "micro", "macro"):
            raise ValueError(f"F1: average must be 'binary', 'micro' or 'macro', got {average!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
            raise ValueError(f"F1: num_classes must be an int >= 2 or None, got {num_classes!r}")
        self.average = average
        self.num_classes = num_classes if num_classes is not None else (2 if average == "binary" else None)
        self.threshold = threshold
        self.pos_label = pos_label
        self.name = "f1" if average == "binary" else f"f1_{average}"
        super().__init__()

    def _initial_shapes(self) -> dict[str, tuple[int, ...]]:
        n = self.num_classes or 0
        return {"confusion": (n, n), "out_of_range": ()}

    def predict(self, y_score: Any) -> torch.Tensor:
        return _classify(y_score, self.threshold)

    def _accumulate(self, states, y_pred, y_true) -> None:
        _check_same_shape(self, y_pred, y_true)
        y_true, y_pred = y_true.reshape(-1).long(), y_pred.reshape(-1).long()
        confusion = states["confusion"]
        n = confusion.shape[0]
        if self.num_classes is None and y_true.numel():
            # Growing needs the largest label on the host: one sync per batch,
            # avoided by passing num_classes.
            needed = int(torch.maximum(y_true.max(), y_pred.max())) + 1
            if needed > n:
                grown = torch.zeros(needed, needed, dtype=torch.float64, device=confusion.device)
                grown[:n, :n] = confusion
                states["confusion"] = confusion = grown
                n = needed
        # Labels outside [0, n) are counted, not indexed (which would land in another cell or
        # fail on one rank only); calculate() raises on every rank when the global count is > 0.
        valid = (y_true >= 0) & (y_true < n) & (y_pred >= 0) & (y_pred < n)
        states["out_of_range"] += (~valid).sum()
        index = torch.where(valid, y_true * n + y_pred, 0)
        confusion.view(-1).index_add_(0, index, valid.to(torch.float64))

    def _check_states(self, states: Mapping[str, torch.Tensor]) -> None:
        count = int(states["out_of_range"])
        if count:
            n = states["confusion"].shape[0]
            if self.average == "binary":
                fix = "binary F1 takes labels 0 and 1: use F1('macro') or F1('micro') for more classes"
            elif self.num_classes:
                fix = f"set num_classes to the number of classes (got num_classes={self.num_classes})"
            else:
                fix = "labels must be >= 0"
            raise ValueError(f"F1(average={self.average!r}): {count} labels or predictions outside [0, {n}); {fix}")

    def _compute(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        confusion = states["confusion"]
        tp = confusion.diagonal()
        fp = confusion.sum(0) - tp
        fn = confusion.sum(1) - tp
        if self.average == "micro":
            tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
            return _f1(tp, fp, fn)
        if self.average == "binary":
            k = self.pos_label
            if k >= confusion.shape[0]:
                return torch.zeros((), dtype=torch.float64, device=confusion.device)
            return _f1(tp[k], fp[k], fn[k])
        present = (tp + fp + fn) > 0
        scores = _f1(tp, fp, fn)
        return torch.where(present, scores, 0.0).sum() / present.sum()

    def _empty_mask(self, states):
        return states["confusion"].sum() == 0


def _f1(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    # scikit-learn's zero_division: 0 where precision and recall are both undefined
    denominator = 2 * tp + fp + fn
    return torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1e-300), 0.0)


class _Regression(Metric):
    _reductions = {"total": SUM, "count": SUM}
    higher_is_better = False

    def _accumulate(self, states, y_pred, y_true) -> None:
        _check_same_shape(self, y_pred, y_true)
        diff = y_pred.reshape(-1).to(torch.float64) - y_true.reshape(-1).to(torch.float64)
        states["total"] += self._error(diff).sum()
        states["count"] += y_true.numel()

    def _compute(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return states["total"] / states["count"]

    def _empty_mask(self, states):
        return states["count"] == 0


class MSE(_Regression):
    """Mean squared error over every element (scikit-learn's ``mean_squared_error``)."""

    name = "mse"

    @staticmethod
    def _error(diff: torch.Tensor) -> torch.Tensor:
        return diff.square()


class MAE(_Regression):
    """Mean absolute error over every element (scikit-learn's ``mean_absolute_error``)."""

    name = "mae"

    @staticmethod
    def _error(diff: torch.Tensor) -> torch.Tensor:
        return diff.abs()


def _detached(value: Any) -> torch.Tensor:
    return value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def _classify(y_score: Any, threshold: float) -> torch.Tensor:
    scores = _detached(y_score)
    if scores.dim() >= 2 and scores.shape[-1] > 1:
        return scores.argmax(-1)
    return (scores.reshape(scores.shape[:-1] if scores.dim() >= 2 else scores.shape) > threshold).long()


def _check_same_shape(metric: Metric, y_pred: torch.Tensor, y_true: torch.Tensor) -> None:
    if y_pred.numel() != y_true.numel():
        raise ValueError(
            f"{type(metric).__name__}: y_pred has {y_pred.numel()} elements (shape {tuple(y_pred.shape)}) but y_true "
            f"has {y_true.numel()} (shape {tuple(y_true.shape)}); pass one prediction per label"
        )


_BY_NAME: dict[str, Any] = {
    "accuracy": Accuracy,
    "f1": lambda: F1("binary"),
    "f1_micro": lambda: F1("micro"),
    "f1_macro": lambda: F1("macro"),
    "mse": MSE,
    "mae": MAE,
}


def evaluate(
    y_true: Any, y_pred: Any = None, y_score: Any = None, metrics: Sequence[str] = ("accuracy",)
) -> dict[str, float]:
    """One-shot values of named metrics on the given data (local, no collective).

    Args:
        y_true: the labels or targets.
        y_pred: predictions; derived from ``y_score`` per metric when ``None``.
        y_score: model outputs (logits, probabilities or regression outputs).
        metrics: names among ``accuracy, f1, f1_micro, f1_macro, mse, mae``.

    Returns:
        ``{name: value}``.
    """
    unknown = [m for m in metrics if m not in _BY_NAME]
    if unknown:
        raise ValueError(f"evaluate(): unknown metrics {unknown}; choose from {sorted(_BY_NAME)}")
    return {m: _BY_NAME[m]().evaluate(y_true=y_true, y_pred=y_pred, y_score=y_score) for m in metrics}
