"""Accuracy: the fraction of predictions equal to the labels (top-k, multilabel, ignored labels).

One class per task over one base, as the confusion counts: class-index labels (binary or
multiclass, with ``ignore_index``) or a multilabel 0/1 matrix. :class:`Accuracy` picks the
task at construction and keeps its own name and signature.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ...accumulators.protocol import SUM
from ...options import is_int
from ..base import Metric
from ..functional.inputs import (
    _check_num_labels,
    _check_same_shape,
    _classify,
    _classify_labels,
    _detached,
    _label_matrices,
)
from ..functional.stat_scores import _ratio
from .stat_scores import _MULTILABEL_AVERAGES


class _AccuracyTask:
    """One task's hit counts: their shapes, the update from a batch and the accuracy read from them."""

    ignore_index: int | None = None

    def __init__(self, owner: str) -> None:
        self.owner = owner

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"correct": (), "total": ()}

    def predict(self, y_score: Any, threshold: float) -> torch.Tensor:
        return _classify(y_score, threshold)

    def update(self, states: dict[str, torch.Tensor], y_pred: torch.Tensor, y_true: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return states["correct"] / states["total"]

    def batch_key(self) -> tuple | None:
        """What accuracies of this task finished together must share; None: finish alone."""
        return ()


class _ClassAccuracy(_AccuracyTask):
    """Class-index labels (binary or multiclass); labels equal to ``ignore_index`` count for nothing."""

    def __init__(self, owner: str, ignore_index: int | None) -> None:
        super().__init__(owner)
        self.ignore_index = ignore_index

    def update(self, states: dict[str, torch.Tensor], y_pred: torch.Tensor, y_true: torch.Tensor) -> None:
        _check_same_shape(self.owner, y_pred, y_true)
        self.count(states, y_pred.reshape(-1) == y_true.reshape(-1), y_true)

    def count(self, states: dict[str, torch.Tensor], hit: torch.Tensor, y_true: torch.Tensor) -> None:
        """Add the samples a boolean ``hit`` marks correct, leaving out the ignored labels."""
        if self.ignore_index is None:
            states["correct"] += hit.sum()
            states["total"] += y_true.numel()
            return
        keep = y_true.reshape(-1) != self.ignore_index  # a mask, not boolean indexing: no host sync
        states["correct"] += (hit & keep).sum()
        states["total"] += keep.sum()


class _MultilabelAccuracy(_AccuracyTask):
    """Per-label hits of an (n, L) 0/1 matrix (torchmetrics' ``MultilabelAccuracy``), then averaged."""

    def __init__(self, owner: str, num_labels: int, average: str, top_k: int) -> None:
        if top_k != 1:
            raise ValueError(f"Accuracy: top_k={top_k} has no multilabel meaning; pass top_k=1 with num_labels")
        if average not in _MULTILABEL_AVERAGES:
            raise ValueError(
                f"Accuracy(num_labels={num_labels}): average must be one of "
                f"{', '.join(map(repr, _MULTILABEL_AVERAGES))}, got {average!r}"
            )
        super().__init__(owner)
        self.num_labels, self.average = num_labels, average

    def shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {"correct": (self.num_labels,), "total": ()}
        if self.average == "weighted":  # only here: the other averages keep their states (and checkpoints)
            shapes["support"] = (self.num_labels,)
        return shapes

    def predict(self, y_score: Any, threshold: float) -> torch.Tensor:
        return _classify_labels(y_score, threshold)

    def update(self, states: dict[str, torch.Tensor], y_pred: torch.Tensor, y_true: torch.Tensor) -> None:
        y_pred, y_true = _label_matrices(self.owner, self.num_labels, y_pred, y_true)
        states["correct"] += (y_pred == y_true).sum(0)
        states["total"] += y_true.shape[0]
        if "support" in states:
            states["support"] += (y_true == 1).sum(0)

    def compute(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        per_label = states["correct"] / states["total"]
        if self.average == "none":
            return per_label
        if self.average == "micro":
            return states["correct"].sum() / (states["total"] * self.num_labels)
        if self.average == "weighted":
            # torchmetrics' rule: weighted by each label's positives; 0 when no label has any
            support = states["support"]
            return _ratio((per_label * support).sum(-1), support.sum(-1))
        return per_label.mean()

    def batch_key(self) -> tuple | None:
        return None


def _in_top_k(y_score: torch.Tensor, y_true: torch.Tensor, k: int) -> torch.Tensor:
    """Whether each label is among the ``k`` highest scores, ties broken as scikit-learn's ``top_k_accuracy_score``.

    scikit-learn ranks by a stable ascending argsort, reversed: among equal scores the higher
    class index ranks first. A class outranks the label's when its score is higher, or equal
    with a higher index; the label is a hit when fewer than ``k`` do. No sort, no host sync.
    Labels outside ``[0, classes)`` (``ignore_index`` too) are misses.
    """
    classes = y_score.shape[1]
    inside = (y_true >= 0) & (y_true < classes)
    label = torch.where(inside, y_true, 0).long().reshape(-1, 1)
    own = y_score.gather(1, label)
    index = torch.arange(classes, device=y_score.device)
    above = (y_score > own) | ((y_score == own) & (index > label))
    return inside & (above.sum(1) < k)


class Accuracy(Metric):
    """Fraction of predictions equal to the labels (scikit-learn's ``accuracy_score``).

    Args:
        threshold: for binary scores (1-D), the probability at or above which
            the prediction is 1; logits are passed through a sigmoid first.
        top_k: with ``top_k > 1`` a sample counts as correct when its label is
            among the ``top_k`` highest scores (scikit-learn's
            ``top_k_accuracy_score``, whose tie rule it follows: among equal scores the
            higher class index ranks first); needs ``y_score`` of shape (n, classes).
        num_labels: multilabel: ``y_true`` is an (n, num_labels) 0/1 matrix and
            ``y_score`` (n, num_labels) probabilities or logits, each thresholded;
            the accuracy is per label (torchmetrics' ``MultilabelAccuracy``, not
            scikit-learn's subset accuracy).
        average: multilabel only: ``"micro"`` (over every label of every sample),
            ``"macro"`` (mean of the per-label accuracies), ``"weighted"`` (their mean
            weighted by each label's number of positive samples, as torchmetrics; 0 when
            no label has a positive) or ``"none"`` (a tensor, one per label).
        ignore_index: labels equal to this count for nothing (torchmetrics' ``ignore_index``), e.g.
            the -100 of padded token labels. Counted with a mask on the device, without a host sync
            (boolean indexing would sync). Not for multilabel.

    Raises:
        ValueError: a bad ``top_k``/``average``/``ignore_index``, or ``ignore_index`` with ``num_labels``.
    """

    higher_is_better = True
    _reductions = {"correct": SUM, "total": SUM}

    def __init__(
        self,
        threshold: float = 0.5,
        top_k: int = 1,
        num_labels: int | None = None,
        average: str = "micro",
        ignore_index: int | None = None,
    ) -> None:
        if not is_int(top_k) or top_k < 1:
            raise ValueError(f"Accuracy: top_k must be an int >= 1, got {top_k!r}")
        if ignore_index is not None and not is_int(ignore_index):
            raise ValueError(f"Accuracy: ignore_index must be an int or None, got {ignore_index!r}")
        if ignore_index is not None and num_labels is not None:
            raise ValueError(
                f"Accuracy(num_labels={num_labels}): ignore_index={ignore_index} is for class-index labels; "
                "multilabel 0/1 matrices have no ignored entries here. Drop ignore_index, or leave out the "
                "ignored rows before update()"
            )
        self.threshold = threshold
        self.top_k = top_k
        self.num_labels = _check_num_labels(type(self).__name__, num_labels)
        if num_labels is None:
            self._task: _AccuracyTask = _ClassAccuracy(type(self).__name__, ignore_index)
            self.name = "accuracy" if top_k == 1 else f"top{top_k}_accuracy"
        else:
            self._task = _MultilabelAccuracy(type(self).__name__, num_labels, average, top_k)
            self.name = "multilabel_accuracy" if average == "micro" else f"multilabel_accuracy_{average}"
        self.average = average
        self._reductions = {name: SUM for name in self._task.shapes()}  # every state is a count
        super().__init__()

    @property
    def ignore_index(self) -> int | None:
        """The label that counts for nothing; the learner sets it on a token task's accuracy without one."""
        return self._task.ignore_index

    @ignore_index.setter
    def ignore_index(self, value: int | None) -> None:
        self._task.ignore_index = value  # read by the task at every update: set mid-run, it holds from then on

    def _initial_shapes(self) -> dict[str, tuple[int, ...]]:
        return self._task.shapes()

    def predict(self, y_score: Any) -> torch.Tensor:
        return self._task.predict(y_score, self.threshold)

    def update(self, y_pred: Any = None, y_true: Any = None, y_score: Any = None) -> None:
        if self.top_k == 1:
            return super().update(y_pred=y_pred, y_true=y_true, y_score=y_score)
        if y_score is None or y_true is None:
            raise ValueError(f"Accuracy(top_k={self.top_k}): pass y_score of shape (n, classes) and y_true")
        y_true, y_score = self._on_state_device(_detached(y_true), _detached(y_score))
        if y_score.dim() != 2 or y_score.shape[0] != y_true.numel():
            raise ValueError(
                f"Accuracy(top_k={self.top_k}): y_score must have shape (n, classes) with n = {y_true.numel()} "
                f"labels, got {tuple(y_score.shape)}"
            )
        self._task.count(self._states, _in_top_k(y_score, y_true.reshape(-1), self.top_k), y_true)

    def _accumulate(self, states, y_pred, y_true) -> None:
        self._task.update(states, y_pred, y_true)

    def _compute(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self._task.compute(states)

    def _convert_global(self, result: torch.Tensor, kind: str, device: torch.device) -> Any:
        return result.to("cpu") if result.dim() else float(result)

    def _batch_config(self) -> tuple | None:
        return self._task.batch_key()

    def _empty_mask(self, states):
        return states["total"] == 0
