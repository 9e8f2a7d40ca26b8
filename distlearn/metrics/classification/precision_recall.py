"""Precision, recall, F-beta and the confusion matrix, read from one task's confusion counts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ...options import is_number
from ..functional.stat_scores import fbeta, precision, recall
from .stat_scores import _Confusion


class Precision(_Confusion):
    """Precision, as scikit-learn's ``precision_score`` (``zero_division=0``).

    Where a ratio is undefined on data that exists (binary precision with no
    predicted positive, a multilabel label never predicted) the score is 0, as
    scikit-learn's default ``zero_division="warn"`` gives (without its warning:
    checking would sync the host). With no sample on any rank the value is NaN,
    for every average, with a ``RuntimeWarning`` saying so; scikit-learn raises
    ``ValueError`` on empty input instead. The same holds for :class:`Recall`,
    :class:`FBeta` and :class:`F1`.

    Args:
        average: ``"binary"`` (class ``pos_label``), ``"micro"``, ``"macro"``
            (unweighted mean over the classes that occur in the labels or the
            predictions) or ``"weighted"`` (weighted by each class's support).
        num_classes: the number of classes; ``None`` grows the matrix with the
            largest label seen (a host sync per batch; ranks are padded to agree).
        threshold: for binary scores, the probability at or above which the prediction is 1.
        pos_label: the positive class for ``average="binary"``.
        num_labels: multilabel: ``y_true`` is an (n, num_labels) 0/1 matrix and
            ``y_score`` (n, num_labels) probabilities or logits, each thresholded.
            ``average`` is then ``"micro"``, ``"macro"`` (over every label),
            ``"weighted"`` or ``"none"`` (a tensor, one score per label), as
            scikit-learn's ``average=`` on an indicator matrix.
    """

    _short = "precision"

    def _per_class(self, tp, fp, fn):
        return precision(tp, fp, fn)


class Recall(_Confusion):
    """Recall, as scikit-learn's ``recall_score`` (``zero_division=0``); arguments as :class:`Precision`."""

    _short = "recall"

    def _per_class(self, tp, fp, fn):
        return recall(tp, fp, fn)


class FBeta(_Confusion):
    """F-beta score, as scikit-learn's ``fbeta_score`` (``zero_division=0``).

    Args:
        beta: weight of recall against precision (``beta=1`` is F1).
        average, num_classes, threshold, pos_label: as :class:`Precision`.
    """

    _short = "fbeta"

    def __init__(
        self,
        beta: float = 1.0,
        average: str = "binary",
        num_classes: int | None = None,
        threshold: float = 0.5,
        pos_label: int = 1,
        num_labels: int | None = None,
    ) -> None:
        if not is_number(beta) or not beta > 0:
            raise ValueError(f"{type(self).__name__}: beta must be a number > 0, got {beta!r}")
        self.beta = float(beta)
        super().__init__(average, num_classes, threshold, pos_label, num_labels)
        if type(self) is FBeta and num_labels is None:
            self.name = f"f{beta:g}" if average == "binary" else f"f{beta:g}_{average}"
        elif type(self) is FBeta:
            self.name = f"multilabel_f{beta:g}_{average}"

    def _per_class(self, tp, fp, fn):
        return fbeta(tp, fp, fn, self.beta)


class F1(FBeta):
    """F1 score from a confusion matrix, as scikit-learn's ``f1_score``; arguments as :class:`Precision`."""

    _short = "f1"

    def __init__(
        self,
        average: str = "binary",
        num_classes: int | None = None,
        threshold: float = 0.5,
        pos_label: int = 1,
        num_labels: int | None = None,
    ) -> None:
        super().__init__(1.0, average, num_classes, threshold, pos_label, num_labels)


class ConfusionMatrix(_Confusion):
    """The confusion matrix (rows: true labels, columns: predictions) as an int64 tensor on the host.

    As scikit-learn's ``confusion_matrix`` with ``labels=range(num_classes)``.
    ``higher_is_better`` has no meaning for it and is False.
    """

    _short = "confusion_matrix"
    higher_is_better = False

    def __init__(self, num_classes: int | None = None, threshold: float = 0.5) -> None:
        super().__init__("macro", num_classes, threshold)
        self.name = "confusion_matrix"

    @classmethod
    def gives_scalar(cls, average: Any = None) -> bool:
        """A matrix: never one number to choose an epoch on."""
        return False

    def _compute(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return states["confusion"]

    def _batch_config(self) -> None:
        return None

    def _empty_mask(self, states):
        return None

    def _convert(self, result: torch.Tensor, kind: str, device: torch.device) -> torch.Tensor:
        return result.to(device=device, dtype=torch.int64)

    def _convert_global(self, result: torch.Tensor, kind: str, device: torch.device) -> torch.Tensor:
        return result.to(device="cpu", dtype=torch.int64)
