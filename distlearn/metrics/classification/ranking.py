"""Exact ranking metrics (AUROC, average precision): every (score, label) row is gathered once at calculate()."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch

from ...accumulators.protocol import Accumulator
from ...accumulators.sequences import Cat
from ..functional.inputs import _check_num_labels, _classify, _classify_labels, _detached, _label_matrices
from ..functional.ranking import binary_auroc, binary_average_precision


BinaryScore = Callable[..., float]  # (scores, positive, warn=True) -> the score of one class
MacroScore = Callable[[list[float], str], float]  # (one score per class or label, "classes"/"labels") -> their mean


class _RankingTask:
    """One task's rows (scores, then labels) and the score read from them.

    Args:
        owner: the metric's class name, for error messages.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner

    def predict(self, y_score: Any) -> torch.Tensor:
        return _classify(y_score, 0.5)

    def rows(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score(self, rows: torch.Tensor, binary: BinaryScore, macro: MacroScore) -> float:
        raise NotImplementedError


def _score_columns(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return scores.reshape(labels.numel(), -1) if scores.numel() else scores.reshape(0, 1)


def _with_labels(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.cat([scores.to(torch.float64), labels.reshape(-1, 1).to(scores.device, torch.float64)], 1)


class _BinaryRanking(_RankingTask):
    """One score per sample (or two columns: the positive class's is kept) and 0/1 labels."""

    def rows(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        scores = _score_columns(scores, labels)
        if scores.shape[1] == 2:
            scores = scores[:, 1:]  # two columns: the positive class's
        columns = scores.shape[1]
        if columns != 1:
            raise ValueError(
                f"{self.owner}: y_score has {columns} columns; pass num_classes={columns} for "
                "one-vs-rest multiclass scores"
            )
        return _with_labels(scores, labels)

    def score(self, rows: torch.Tensor, binary: BinaryScore, macro: MacroScore) -> float:
        return binary(rows[:, 0], rows[:, -1].long() == 1)


class _OneVsRestRanking(_RankingTask):
    """One score per class and class-index labels: each class against the rest, macro average."""

    def __init__(self, owner: str, num_classes: int) -> None:
        super().__init__(owner)
        self.num_classes = num_classes

    def rows(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        scores = _score_columns(scores, labels)
        columns = scores.shape[1]
        if columns != self.num_classes:
            raise ValueError(
                f"{self.owner}(num_classes={self.num_classes}): y_score has {columns} columns; "
                "pass one score per class"
            )
        return _with_labels(scores, labels)

    def score(self, rows: torch.Tensor, binary: BinaryScore, macro: MacroScore) -> float:
        scores, labels = rows[:, :-1], rows[:, -1].long()
        values = [binary(scores[:, k], labels == k, warn=False) for k in range(scores.shape[1])]
        return macro(values, "classes")


class _MultilabelRanking(_RankingTask):
    """(n, L) scores and 0/1 labels: scikit-learn's ``average="macro"`` over the labels of an indicator matrix."""

    def __init__(self, owner: str, num_labels: int) -> None:
        super().__init__(owner)
        self.num_labels = num_labels

    def predict(self, y_score: Any) -> torch.Tensor:
        return _classify_labels(y_score, 0.5)

    def rows(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # rows: the labels' scores, then their 0/1 labels
        scores, labels = _label_matrices(self.owner, self.num_labels, scores, labels)
        return torch.cat([scores.to(torch.float64), labels.to(scores.device, torch.float64)], 1)

    def score(self, rows: torch.Tensor, binary: BinaryScore, macro: MacroScore) -> float:
        n = self.num_labels
        return macro([binary(rows[:, k], rows[:, n + k] == 1, warn=False) for k in range(n)], "labels")


class _Ranked(Accumulator):
    """Exact ranking metrics: every (score, label) row is gathered once at calculate().

    State grows with the data (the rows travel in the List/Cat gather); see the
    binned variants for a constant-size state.
    """

    higher_is_better: ClassVar[bool] = True
    _short: ClassVar[str]

    def __init__(self, num_classes: int | None = None, num_labels: int | None = None) -> None:
        owner = type(self).__name__
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
            raise ValueError(f"{owner}: num_classes must be an int >= 2 or None, got {num_classes!r}")
        self.num_labels = _check_num_labels(owner, num_labels)
        if num_labels is not None and num_classes is not None:
            raise ValueError(f"{owner}: pass num_classes (multiclass) or num_labels (multilabel), not both")
        self.num_classes = num_classes
        if num_labels is not None:
            self._task: _RankingTask = _MultilabelRanking(owner, num_labels)
            self.name = f"multilabel_{self._short}_macro"
        elif num_classes in (None, 2):
            self._task = _BinaryRanking(owner)
            self.name = self._short
        else:
            self._task = _OneVsRestRanking(owner, num_classes)
            self.name = f"{self._short}_macro"
        self._rows = Cat()

    def predict(self, y_score: Any) -> torch.Tensor:
        return self._task.predict(y_score)

    def update(self, y_pred: Any = None, y_true: Any = None, y_score: Any = None) -> None:
        """Keep the batch's scores (``y_score``; else ``y_pred``) and labels."""
        scores = y_score if y_score is not None else y_pred
        if scores is None or y_true is None:
            raise ValueError(f"{type(self).__name__}: pass y_score (or y_pred) and y_true")
        self._rows.update(self._task.rows(_detached(scores), _detached(y_true)))

    def value(self) -> float:
        return self._score(self._rows.value())

    def reset(self) -> None:
        self._rows.reset()

    def state_dict(self) -> dict[str, Any]:
        return self._rows.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self._rows.load_state_dict(state_dict)

    def _tensor_device(self) -> torch.device | None:
        return self._rows._tensor_device()

    def _spec(self) -> tuple:
        return (self._name, self._rows._chunks._device_type())

    def _local(self, spec: tuple) -> float:
        return self.value()

    def _contribute(self, spec: tuple):
        return self._rows._contribute(spec)

    def _finish(self, spec, sums, maxes, blobs) -> float:
        return self._score(self._rows._finish(spec, sums, maxes, blobs))

    def evaluate(self, y_true: Any = None, y_pred: Any = None, y_score: Any = None) -> float:
        fresh = copy.deepcopy(self)
        fresh.reset()
        fresh.update(y_pred=y_pred, y_true=y_true, y_score=y_score)
        return fresh.value()

    def _score(self, rows: torch.Tensor) -> float:
        if rows.numel() == 0:
            return _undefined(self.name, "no samples")
        return self._task.score(rows.to("cpu"), self._binary, self._macro)

    def _macro(self, values: list[float], what: str) -> float:
        defined = [v for v in values if not math.isnan(v)]
        if len(defined) < len(values):
            warnings.warn(f"{self.name}: {what} without positive (or negative) samples are left out", RuntimeWarning)
        return sum(defined) / len(defined) if defined else float("nan")

    def _binary(self, scores: torch.Tensor, positive: torch.Tensor, warn: bool = True) -> float:
        raise NotImplementedError


def _undefined(name: str, why: str, warn: bool = True) -> float:
    if warn:
        warnings.warn(f"{name}: undefined ({why}); the result is NaN", RuntimeWarning, stacklevel=3)
    return float("nan")


class AUROC(_Ranked):
    """Area under the ROC curve, exact (scikit-learn's ``roc_auc_score``).

    Binary: scores of shape (n,) (probabilities or logits alike); multiclass
    with ``num_classes``: one-vs-rest, macro average over the classes;
    multilabel with ``num_labels``: (n, num_labels) scores and 0/1 labels, macro
    average over the labels. NaN with a warning where only one class occurs;
    classes or labels with one class only are left out of the average, with a warning.
    """

    _short = "auroc"

    def _binary(self, scores, positive, warn=True):
        n_pos = int(positive.sum())
        if n_pos == 0 or n_pos == positive.numel():
            return _undefined(self.name, "only one class present", warn)
        return binary_auroc(scores, positive, n_pos)


class AveragePrecision(_Ranked):
    """Average precision, exact (scikit-learn's ``average_precision_score``).

    Binary, one-vs-rest macro with ``num_classes``, or macro over the labels
    with ``num_labels`` ((n, num_labels) scores and 0/1 labels). NaN with a
    warning where a class has no positive sample.
    """

    _short = "average_precision"

    def _binary(self, scores, positive, warn=True):
        n_pos = int(positive.sum())
        if n_pos == 0:
            return _undefined(self.name, "no positive sample", warn)
        return binary_average_precision(scores, positive, n_pos)
