"""Confusion counts per task, one class each over one base, and the metric base that reads scores from them.

As torchmetrics' Binary/Multiclass/MultilabelStatScores: a binary or multiclass task
counts an (n, n) confusion matrix, a multilabel task (4, L) counts per label. The public
metrics (:class:`Precision` and the others) pick their task at construction and keep
their own class, name and signature; the task owns the states' layout, the update, the
out-of-range check and the average.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ...accumulators.protocol import SUM
from ..base import Metric
from ..functional.inputs import _check_num_labels, _check_same_shape, _classify, _classify_labels, _label_matrices
from ..functional.stat_scores import (
    PerClass,
    binary_scores,
    multiclass_confusion_update,
    multiclass_scores,
    multilabel_scores,
    multilabel_stat_scores,
)

_AVERAGES = ("binary", "micro", "macro", "weighted")
_MULTILABEL_AVERAGES = ("micro", "macro", "weighted", "none")


class _StatScores:
    """One task's counts: their states, the update from a batch, and the averaged score read from them.

    Args:
        owner: the metric's class name, for error messages.
        average: the average the scores take.
    """

    reductions: ClassVar[dict[str, str]]
    growable: bool = False  # may the states of ranks differ in shape (padded to the largest)?
    num_classes: int | None = None
    pos_label: int = 1  # the class a binary task reads; the others keep it for the metric

    def __init__(self, owner: str, average: str) -> None:
        self.owner = owner
        self.average = average

    def shapes(self) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def predict(self, y_score: Any, threshold: float) -> torch.Tensor:
        raise NotImplementedError

    def update(self, states: dict[str, torch.Tensor], y_pred: torch.Tensor, y_true: torch.Tensor) -> None:
        raise NotImplementedError

    def check(self, states: Mapping[str, torch.Tensor]) -> None:
        """Raise on every rank when any rank counted a label or prediction outside the task's range."""
        count = int(states["out_of_range"].sum())
        if count:
            raise ValueError(self._out_of_range(count, states))

    def _out_of_range(self, count: int, states: Mapping[str, torch.Tensor]) -> str:
        raise NotImplementedError

    def scores(self, states: Mapping[str, torch.Tensor], per_class: PerClass) -> torch.Tensor:
        raise NotImplementedError

    def empty(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Where no sample was counted (one entry per leading batch index)."""
        raise NotImplementedError

    def batch_key(self) -> tuple | None:
        """What metrics of this task finished together must share; None: finish alone."""
        return None


class _MulticlassStatScores(_StatScores):
    """An (n, n) confusion matrix of class labels; ``average`` ``"micro"``, ``"macro"`` or ``"weighted"``."""

    reductions = {"confusion": SUM, "out_of_range": SUM}

    def __init__(self, owner: str, average: str, num_classes: int | None) -> None:
        if average not in _AVERAGES:
            raise ValueError(f"{owner}: average must be one of {', '.join(map(repr, _AVERAGES))}, got {average!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
            raise ValueError(f"{owner}: num_classes must be an int >= 2 or None, got {num_classes!r}")
        super().__init__(owner, average)
        self.num_classes = num_classes if num_classes is not None else (2 if average == "binary" else None)
        # A known number of classes is a fixed (n, n) matrix: calculate() may cache its spec and plan
        # its reduction. Only num_classes=None grows the matrix (and is padded across ranks).
        self.growable = self.num_classes is None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        n = self.num_classes or 0
        return {"confusion": (n, n), "out_of_range": ()}

    def predict(self, y_score: Any, threshold: float) -> torch.Tensor:
        return _classify(y_score, threshold)

    def update(self, states: dict[str, torch.Tensor], y_pred: torch.Tensor, y_true: torch.Tensor) -> None:
        _check_same_shape(self.owner, y_pred, y_true)
        grow = self.num_classes is None
        states["confusion"], out_of_range = multiclass_confusion_update(states["confusion"], y_pred, y_true, grow)
        states["out_of_range"] += out_of_range

    def _out_of_range(self, count: int, states: Mapping[str, torch.Tensor]) -> str:
        n = states["confusion"].shape[-1]
        return f"{self.owner}(average={self.average!r}): {count} labels or predictions outside [0, {n}); {self._fix()}"

    def _fix(self) -> str:
        if self.num_classes:
            return f"set num_classes to the number of classes (got num_classes={self.num_classes})"
        return "labels must be >= 0"

    def scores(self, states: Mapping[str, torch.Tensor], per_class: PerClass) -> torch.Tensor:
        return multiclass_scores(states["confusion"], self.average, per_class)

    def empty(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return states["confusion"].sum((-2, -1)) == 0

    def batch_key(self) -> tuple | None:
        return (self.average,)


class _BinaryStatScores(_MulticlassStatScores):
    """The confusion matrix read for one class, ``pos_label`` (``average="binary"``)."""

    def __init__(self, owner: str, num_classes: int | None) -> None:
        super().__init__(owner, "binary", num_classes)

    def _fix(self) -> str:
        owner = self.owner
        return f"binary {owner} takes labels 0 and 1: use {owner}('macro') or {owner}('micro') for more classes"

    def scores(self, states: Mapping[str, torch.Tensor], per_class: PerClass) -> torch.Tensor:
        return binary_scores(states["confusion"], self.pos_label, per_class)


class _MultilabelStatScores(_StatScores):
    """Per-label counts of (n, L) 0/1 labels; ``average`` ``"micro"``, ``"macro"``, ``"weighted"`` or ``"none"``."""

    # per label: true positives, false positives, false negatives, true negatives (rows)
    reductions = {"counts": SUM, "out_of_range": SUM}

    def __init__(self, owner: str, average: str, num_labels: int, num_classes: int | None) -> None:
        if average not in _MULTILABEL_AVERAGES:
            raise ValueError(
                f"{owner}(num_labels={num_labels}): average must be one of "
                f"{', '.join(map(repr, _MULTILABEL_AVERAGES))} ('none': one score per label), got {average!r}"
            )
        if num_classes is not None:
            raise ValueError(f"{owner}: pass num_classes (multiclass) or num_labels (multilabel), not both")
        super().__init__(owner, average)
        self.num_labels = num_labels

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"counts": (4, self.num_labels), "out_of_range": ()}

    def predict(self, y_score: Any, threshold: float) -> torch.Tensor:
        return _classify_labels(y_score, threshold)

    def update(self, states: dict[str, torch.Tensor], y_pred: torch.Tensor, y_true: torch.Tensor) -> None:
        y_pred, y_true = _label_matrices(self.owner, self.num_labels, y_pred, y_true)
        # Values other than 0 and 1 are counted; calculate() raises on every rank when any occurred.
        counts, out_of_range = multilabel_stat_scores(y_pred, y_true)
        states["counts"] += counts
        states["out_of_range"] += out_of_range

    def _out_of_range(self, count: int, states: Mapping[str, torch.Tensor]) -> str:
        return (
            f"{self.owner}(num_labels={self.num_labels}): {count} labels or predictions other than "
            "0 and 1; pass a 0/1 indicator matrix of shape (n, num_labels) (or scores as y_score)"
        )

    def scores(self, states: Mapping[str, torch.Tensor], per_class: PerClass) -> torch.Tensor:
        return multilabel_scores(states["counts"], self.average, per_class)

    def empty(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return states["counts"][..., 0].sum(-1) == 0  # no samples: label 0's four counts are all zero


def _stat_scores(
    owner: str, average: str, num_classes: int | None, pos_label: int, num_labels: int | None
) -> _StatScores:
    """The task the arguments of :class:`Precision` (and the others) name."""
    if num_labels is not None:
        task: _StatScores = _MultilabelStatScores(owner, average, num_labels, num_classes)
    elif average == "binary":
        task = _BinaryStatScores(owner, num_classes)
    else:
        task = _MulticlassStatScores(owner, average, num_classes)
    task.pos_label = pos_label
    return task


class _Confusion(Metric):
    """Scores read from one task's confusion counts; subclasses give the score per class."""

    higher_is_better = True
    _reductions = _MulticlassStatScores.reductions
    _growable = True
    _short: ClassVar[str]

    def __init__(
        self,
        average: str = "binary",
        num_classes: int | None = None,
        threshold: float = 0.5,
        pos_label: int = 1,
        num_labels: int | None = None,
    ) -> None:
        owner = type(self).__name__
        self.num_labels = _check_num_labels(owner, num_labels)
        self._task = _stat_scores(owner, average, num_classes, pos_label, num_labels)
        self.average, self.num_classes = average, self._task.num_classes
        self.threshold = threshold
        self._reductions = self._task.reductions
        self._growable = self._task.growable  # fixed shape: the spec is cached, the state planned
        if num_labels is not None:
            self.name = f"multilabel_{self._short}_{average}"
        else:
            self.name = self._short if average == "binary" else f"{self._short}_{average}"
        super().__init__()

    @property
    def pos_label(self) -> int:
        """The positive class of ``average="binary"``; kept by the task, which reads it at every score."""
        return self._task.pos_label

    @pos_label.setter
    def pos_label(self, value: int) -> None:
        self._task.pos_label = value

    def _initial_shapes(self) -> dict[str, tuple[int, ...]]:
        return self._task.shapes()

    def predict(self, y_score: Any) -> torch.Tensor:
        return self._task.predict(y_score, self.threshold)

    def _accumulate(self, states, y_pred, y_true) -> None:
        self._task.update(states, y_pred, y_true)

    def _batch_config(self) -> tuple | None:
        key = self._task.batch_key()
        return None if key is None else (*key, self.pos_label, getattr(self, "beta", None))

    def _check_states(self, states: Mapping[str, torch.Tensor]) -> None:
        self._task.check(states)

    def _per_class(self, tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _compute(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # No sample on any rank: NaN, as the warning given with it says (for every average; a
        # ratio undefined on data that exists is 0, scikit-learn's zero_division default).
        scores = self._task.scores(states, self._per_class)
        empty = self._empty_mask(states)
        if scores.dim() > empty.dim():  # average="none": one score per label
            empty = empty.unsqueeze(-1)
        return torch.where(empty, math.nan, scores)

    def _convert_global(self, result: torch.Tensor, kind: str, device: torch.device) -> Any:
        return result.to("cpu") if result.dim() else float(result)

    def _empty_mask(self, states):
        return self._task.empty(states)
