"""Metrics as accumulators of sufficient statistics.

Each metric keeps counts, sums or a confusion matrix in float64 and reduces
them in the same coalesced collective as any other accumulator, so the global
value is exact: N ranks give what one process gives on the same data.

    acc = Accuracy()
    for x, y in loader:
        acc(y_score=model(x), y_true=y)   # local, no collective, no host sync
    acc.calculate()                       # collective: exact global accuracy

Every metric has ``name`` (a short name for records and W&B) and
``higher_is_better``. :class:`Metrics` holds several, reduced together.

Binary scores (1-D, or one column) are probabilities or logits: as in
torchmetrics, a batch with any score outside [0, 1] goes through a sigmoid,
and a score ``>= threshold`` predicts 1. The choice is made on the device
per batch (``torch.where``), without a host sync. Multilabel metrics
(``num_labels=L``) take (n, L) 0/1 labels and scores under the same rule, and
keep per-label float64 counts.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .accumulators.protocol import SUM, Accumulator
from .accumulators.sequences import Cat
from .accumulators.tensor import TensorAccumulator
from .accumulators.values import check_nan_strategy as _check_nan_strategy
from .accumulators.values import report_nans as _report_nans
from .accumulators.values import state_device as _state_device
from .options import is_int, is_number

__all__ = [
    "AUROC",
    "F1",
    "MAE",
    "MSE",
    "R2",
    "RMSE",
    "Accuracy",
    "AveragePrecision",
    "BinnedAUROC",
    "BinnedAveragePrecision",
    "ConfusionMatrix",
    "FBeta",
    "Metric",
    "Metrics",
    "Perplexity",
    "Precision",
    "Recall",
    "evaluate",
    "is_metric",
]


class Metric(TensorAccumulator):
    """Base of metrics: fixed-shape float64 states created at construction.

    Calling a metric updates it with a batch and returns the local running
    value (a float64 0-d tensor, no host sync); :meth:`calculate` returns the
    exact global value as a Python float.
    """

    name: str
    higher_is_better: ClassVar[bool]

    def reset(self) -> None:
        """Zero the states in place, on the device they live on (no trip to the host)."""
        states = getattr(self, "_states", None)
        shapes = self._initial_shapes()
        if states is not None and set(states) == set(shapes) and all(
            tuple(s.shape) == shapes[n] for n, s in states.items()
        ):
            for name, state in states.items():
                state.fill_(0.0 if self._reductions[name] == SUM else -math.inf)  # a kernel argument, no copy
            return
        device = getattr(self, "_device", torch.device("cpu"))
        super().reset()
        self._device = device
        self._kind = "float64"
        self._states = self._neutral(shapes, _state_device(device))

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
        y_true, y_pred = self._on_state_device(_detached(y_true), _detached(y_pred))
        self._accumulate(self._states, y_pred, y_true)

    def _on_state_device(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        device = tensors[0].device
        if device != self._device:  # first batch on a new device: the states follow, once
            self._device = device
            self._states = {n: s.to(_state_device(device)) for n, s in self._states.items()}
        state_device = next(iter(self._states.values())).device
        return tuple(t if t.device == state_device else t.to(state_device) for t in tensors)

    def _accumulate(self, states: dict[str, torch.Tensor], y_pred: torch.Tensor, y_true: torch.Tensor) -> None:
        raise NotImplementedError

    def _convert_global(self, result: torch.Tensor, kind: str, device: torch.device) -> Any:
        return float(result)

    # -- many metrics of one kind finished at once ---------------------------- #

    def _batch_config(self) -> tuple | None:
        """What metrics finished together must share (their settings); None: finish alone.

        Only metrics whose ``_compute``, ``_check_states`` and ``_empty_mask``
        accept states with a leading batch dimension return a tuple.
        """
        return None

    @classmethod
    def _batch_values(cls, accs: Sequence[Metric], specs: Sequence[tuple], block: torch.Tensor) -> list[Any] | None:
        """The values of metrics of one kind and settings from ``block`` (one row of states each)."""
        first, shapes = accs[0], specs[0][2]
        widths = [math.prod(shape) for _, shape in shapes]
        states = {
            name: column.reshape(len(accs), *shape)
            for (name, shape), column in zip(shapes, block.split(widths, dim=1))
        }
        empty = first._empty_mask(states)
        if empty is not None and bool(empty.any()):
            return None  # warnings to give: the careful path, one by one
        first._check_states(states)
        return first._compute(states).tolist()

    def _empty_value(self) -> float:
        return float("nan")

    def evaluate(self, y_true: Any = None, y_pred: Any = None, y_score: Any = None) -> Any:
        """One-shot value on the given data: local, no collective, this metric's state untouched."""
        fresh = copy.deepcopy(self)
        fresh.reset()
        fresh.update(y_pred=y_pred, y_true=y_true, y_score=y_score)
        return fresh._local(fresh._spec())


# --------------------------------------------------------------------------- #
# Classification from predictions
# --------------------------------------------------------------------------- #


class Accuracy(Metric):
    """Fraction of predictions equal to the labels (scikit-learn's ``accuracy_score``).

    Args:
        threshold: for binary scores (1-D), the probability at or above which
            the prediction is 1; logits are passed through a sigmoid first.
        top_k: with ``top_k > 1`` a sample counts as correct when its label is
            among the ``top_k`` highest scores (scikit-learn's
            ``top_k_accuracy_score``); needs ``y_score`` of shape (n, classes).
        num_labels: multilabel: ``y_true`` is an (n, num_labels) 0/1 matrix and
            ``y_score`` (n, num_labels) probabilities or logits, each thresholded;
            the accuracy is per label (torchmetrics' ``MultilabelAccuracy``, not
            scikit-learn's subset accuracy).
        average: multilabel only: ``"micro"`` (over every label of every sample),
            ``"macro"`` (mean of the per-label accuracies) or ``"none"`` (a tensor, one per label).
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
        self.ignore_index = ignore_index
        self.threshold = threshold
        self.top_k = top_k
        self.num_labels = _check_num_labels(self, num_labels)
        self.name = "accuracy" if top_k == 1 else f"top{top_k}_accuracy"
        if num_labels is not None:
            if top_k != 1:
                raise ValueError(f"Accuracy: top_k={top_k} has no multilabel meaning; pass top_k=1 with num_labels")
            if average not in _MULTILABEL_AVERAGES:
                raise ValueError(
                    f"Accuracy(num_labels={num_labels}): average must be one of "
                    f"{', '.join(map(repr, _MULTILABEL_AVERAGES))}, got {average!r}"
                )
            self._reductions = {"correct": SUM, "total": SUM}
            self.name = "multilabel_accuracy" if average == "micro" else f"multilabel_accuracy_{average}"
        self.average = average
        super().__init__()

    def _initial_shapes(self) -> dict[str, tuple[int, ...]]:
        if self.num_labels is None:
            return super()._initial_shapes()
        return {"correct": (self.num_labels,), "total": ()}

    def predict(self, y_score: Any) -> torch.Tensor:
        if self.num_labels is not None:
            return _classify_labels(y_score, self.threshold)
        return _classify(y_score, self.threshold)

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
        k = min(self.top_k, y_score.shape[1])
        top = y_score.topk(k, dim=1).indices
        hit = (top == y_true.reshape(-1, 1)).any(1)
        if self.ignore_index is None:
            self._states["correct"] += hit.sum()
            self._states["total"] += y_true.numel()
            return
        keep = y_true.reshape(-1) != self.ignore_index
        self._states["correct"] += (hit & keep).sum()
        self._states["total"] += keep.sum()

    def _accumulate(self, states, y_pred, y_true) -> None:
        if self.num_labels is not None:
            y_pred, y_true = _label_matrices(self, y_pred, y_true)
            states["correct"] += (y_pred == y_true).sum(0)
            states["total"] += y_true.shape[0]
            return
        _check_same_shape(self, y_pred, y_true)
        hit = y_pred.reshape(-1) == y_true.reshape(-1)
        if self.ignore_index is None:
            states["correct"] += hit.sum()
            states["total"] += y_true.numel()
            return
        keep = y_true.reshape(-1) != self.ignore_index  # a mask, not boolean indexing: no host sync
        states["correct"] += (hit & keep).sum()
        states["total"] += keep.sum()

    def _compute(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.num_labels is not None:  # torchmetrics' MultilabelAccuracy: per label, then averaged
            per_label = states["correct"] / states["total"]
            if self.average == "none":
                return per_label
            if self.average == "micro":
                return states["correct"].sum() / (states["total"] * self.num_labels)
            return per_label.mean()
        return states["correct"] / states["total"]

    def _convert_global(self, result: torch.Tensor, kind: str, device: torch.device) -> Any:
        return result.to("cpu") if result.dim() else float(result)

    def _batch_config(self) -> tuple | None:
        return () if self.num_labels is None else None

    def _empty_mask(self, states):
        return states["total"] == 0


_AVERAGES = ("binary", "micro", "macro", "weighted")
_MULTILABEL_AVERAGES = ("micro", "macro", "weighted", "none")


class _Confusion(Metric):
    """A confusion matrix (rows: labels, columns: predictions) and scores read from it."""

    higher_is_better = True
    _reductions = {"confusion": SUM, "out_of_range": SUM}
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
        self.num_labels = _check_num_labels(self, num_labels)
        if num_labels is not None:
            if average not in _MULTILABEL_AVERAGES:
                raise ValueError(
                    f"{owner}(num_labels={num_labels}): average must be one of "
                    f"{', '.join(map(repr, _MULTILABEL_AVERAGES))} ('none': one score per label), got {average!r}"
                )
            if num_classes is not None:
                raise ValueError(f"{owner}: pass num_classes (multiclass) or num_labels (multilabel), not both")
            self.average, self.num_classes, self.threshold, self.pos_label = average, None, threshold, pos_label
            # per label: true positives, false positives, false negatives, true negatives (rows)
            self._reductions = {"counts": SUM, "out_of_range": SUM}
            self._growable = False  # fixed shape: the spec is cached, the state planned
            self.name = f"multilabel_{self._short}_{average}"
            Metric.__init__(self)
            return
        if average not in _AVERAGES:
            raise ValueError(f"{owner}: average must be one of {', '.join(map(repr, _AVERAGES))}, got {average!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
            raise ValueError(f"{owner}: num_classes must be an int >= 2 or None, got {num_classes!r}")
        self.average = average
        self.num_classes = num_classes if num_classes is not None else (2 if average == "binary" else None)
        # A known number of classes is a fixed (n, n) matrix: calculate() may cache its spec and plan
        # its reduction. Only num_classes=None grows the matrix (and is padded across ranks).
        self._growable = self.num_classes is None
        self.threshold = threshold
        self.pos_label = pos_label
        self.name = self._short if average == "binary" else f"{self._short}_{average}"
        super().__init__()

    def _initial_shapes(self) -> dict[str, tuple[int, ...]]:
        if self.num_labels is not None:
            return {"counts": (4, self.num_labels), "out_of_range": ()}
        n = self.num_classes or 0
        return {"confusion": (n, n), "out_of_range": ()}

    def predict(self, y_score: Any) -> torch.Tensor:
        if self.num_labels is not None:
            return _classify_labels(y_score, self.threshold)
        return _classify(y_score, self.threshold)

    def _accumulate(self, states, y_pred, y_true) -> None:
        if self.num_labels is not None:
            y_pred, y_true = _label_matrices(self, y_pred, y_true)
            # Values other than 0 and 1 are counted; calculate() raises on every rank when any occurred.
            states["out_of_range"] += ((y_true != 0) & (y_true != 1)).sum() + ((y_pred != 0) & (y_pred != 1)).sum()
            t, p = y_true == 1, y_pred == 1
            states["counts"] += torch.stack([(t & p).sum(0), (~t & p).sum(0), (t & ~p).sum(0), (~t & ~p).sum(0)])
            return
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

    def _batch_config(self) -> tuple | None:
        if self.num_labels is not None:
            return None
        return (self.average, self.pos_label, getattr(self, "beta", None))

    def _check_states(self, states: Mapping[str, torch.Tensor]) -> None:
        count = int(states["out_of_range"].sum())
        if count and self.num_labels is not None:
            raise ValueError(
                f"{type(self).__name__}(num_labels={self.num_labels}): {count} labels or predictions other than "
                "0 and 1; pass a 0/1 indicator matrix of shape (n, num_labels) (or scores as y_score)"
            )
        if count:
            n = states["confusion"].shape[-1]
            owner = type(self).__name__
            if self.average == "binary":
                fix = f"binary {owner} takes labels 0 and 1: use {owner}('macro') or {owner}('micro') for more classes"
            elif self.num_classes:
                fix = f"set num_classes to the number of classes (got num_classes={self.num_classes})"
            else:
                fix = "labels must be >= 0"
            raise ValueError(
                f"{owner}(average={self.average!r}): {count} labels or predictions outside [0, {n}); {fix}"
            )

    def _per_class(self, tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _compute(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # No sample on any rank: NaN, as the warning given with it says (for every average; a
        # ratio undefined on data that exists is 0, scikit-learn's zero_division default).
        scores = self._scores(states)
        empty = self._empty_mask(states)
        if scores.dim() > empty.dim():  # average="none": one score per label
            empty = empty.unsqueeze(-1)
        return torch.where(empty, math.nan, scores)

    def _scores(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.num_labels is not None:
            return self._compute_multilabel(states["counts"])
        # Written for (..., n, n) so that many metrics of one kind finish in one pass.
        confusion = states["confusion"]
        tp = confusion.diagonal(dim1=-2, dim2=-1)
        fp = confusion.sum(-2) - tp
        fn = confusion.sum(-1) - tp
        if self.average == "micro":
            return self._per_class(tp.sum(-1), fp.sum(-1), fn.sum(-1))
        if self.average == "binary":
            k = self.pos_label
            if k >= confusion.shape[-1]:
                return torch.zeros(confusion.shape[:-2], dtype=torch.float64, device=confusion.device)
            return self._per_class(tp[..., k], fp[..., k], fn[..., k])
        # scikit-learn's labels: those that occur in the labels or the predictions
        present = (tp + fp + fn) > 0
        scores = torch.where(present, self._per_class(tp, fp, fn), 0.0)
        if self.average == "weighted":
            support = tp + fn
            return (scores * support).sum(-1) / support.sum(-1)
        return scores.sum(-1) / present.sum(-1)

    def _compute_multilabel(self, counts: torch.Tensor) -> torch.Tensor:
        # scikit-learn on an indicator matrix: every label counts in the macro mean, 0 where undefined
        tp, fp, fn, _ = counts.unbind(-2)
        if self.average == "micro":
            return self._per_class(tp.sum(-1), fp.sum(-1), fn.sum(-1))
        scores = self._per_class(tp, fp, fn)
        if self.average == "none":
            return scores
        if self.average == "weighted":
            support = tp + fn
            return _ratio((scores * support).sum(-1), support.sum(-1))
        return scores.mean(-1)

    def _convert_global(self, result: torch.Tensor, kind: str, device: torch.device) -> Any:
        return result.to("cpu") if result.dim() else float(result)

    def _empty_mask(self, states):
        if self.num_labels is not None:
            return states["counts"][..., 0].sum(-1) == 0  # no samples: label 0's four counts are all zero
        return states["confusion"].sum((-2, -1)) == 0


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    # scikit-learn's zero_division default: 0 where the ratio is undefined
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1e-300), 0.0)


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
        return _ratio(tp, tp + fp)


class Recall(_Confusion):
    """Recall, as scikit-learn's ``recall_score`` (``zero_division=0``); arguments as :class:`Precision`."""

    _short = "recall"

    def _per_class(self, tp, fp, fn):
        return _ratio(tp, tp + fn)


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
        b2 = self.beta**2
        return _ratio((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp)


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


# --------------------------------------------------------------------------- #
# Ranking metrics: exact (scores gathered) and binned (constant-size state)
# --------------------------------------------------------------------------- #


class _Ranked(Accumulator):
    """Exact ranking metrics: every (score, label) row is gathered once at calculate().

    State grows with the data (the rows travel in the List/Cat gather); see the
    binned variants for a constant-size state.
    """

    higher_is_better: ClassVar[bool] = True
    _short: ClassVar[str]

    def __init__(self, num_classes: int | None = None, num_labels: int | None = None) -> None:
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
            raise ValueError(f"{type(self).__name__}: num_classes must be an int >= 2 or None, got {num_classes!r}")
        self.num_labels = _check_num_labels(self, num_labels)
        if num_labels is not None and num_classes is not None:
            raise ValueError(f"{type(self).__name__}: pass num_classes (multiclass) or num_labels (multilabel), not both")
        self.num_classes = num_classes
        self.name = self._short if num_classes in (None, 2) else f"{self._short}_macro"
        if num_labels is not None:
            self.name = f"multilabel_{self._short}_macro"
        self._rows = Cat()

    def predict(self, y_score: Any) -> torch.Tensor:
        if self.num_labels is not None:
            return _classify_labels(y_score, 0.5)
        return _classify(y_score, 0.5)

    def update(self, y_pred: Any = None, y_true: Any = None, y_score: Any = None) -> None:
        """Keep the batch's scores (``y_score``; else ``y_pred``) and labels."""
        scores = y_score if y_score is not None else y_pred
        if scores is None or y_true is None:
            raise ValueError(f"{type(self).__name__}: pass y_score (or y_pred) and y_true")
        scores, labels = _detached(scores), _detached(y_true)
        if self.num_labels is not None:  # rows: the label's scores, then its 0/1 labels
            scores, labels = _label_matrices(self, scores, labels)
            self._rows.update(torch.cat([scores.to(torch.float64), labels.to(scores.device, torch.float64)], 1))
            return
        scores = scores.reshape(labels.numel(), -1) if scores.numel() else scores.reshape(0, 1)
        if scores.shape[1] == 2 and self.num_classes in (None, 2):
            scores = scores[:, 1:]  # two columns: the positive class's
        columns = scores.shape[1]
        if self.num_classes not in (None, 2) and columns != self.num_classes:
            raise ValueError(
                f"{type(self).__name__}(num_classes={self.num_classes}): y_score has {columns} columns; "
                "pass one score per class"
            )
        if self.num_classes in (None, 2) and columns != 1:
            raise ValueError(
                f"{type(self).__name__}: y_score has {columns} columns; pass num_classes={columns} for "
                "one-vs-rest multiclass scores"
            )
        rows = torch.cat([scores.to(torch.float64), labels.reshape(-1, 1).to(scores.device, torch.float64)], 1)
        self._rows.update(rows)

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
        rows = rows.to("cpu")
        if self.num_labels is not None:  # scikit-learn's average="macro" over the labels of an indicator matrix
            n = self.num_labels
            values = [self._binary(rows[:, k], rows[:, n + k] == 1, warn=False) for k in range(n)]
            return self._macro(values, "labels")
        scores, labels = rows[:, :-1], rows[:, -1].long()
        if scores.shape[1] == 1:
            return self._binary(scores[:, 0], labels == 1)
        values = [self._binary(scores[:, k], labels == k, warn=False) for k in range(scores.shape[1])]
        return self._macro(values, "classes")

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
        n_neg = positive.numel() - n_pos
        if n_pos == 0 or n_neg == 0:
            return _undefined(self.name, "only one class present", warn)
        # Mann-Whitney U with average ranks for ties: the trapezoidal ROC area.
        order = scores.argsort()
        sorted_scores = scores[order]
        _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
        ends = counts.cumsum(0).to(torch.float64)
        average_rank = ends - (counts.to(torch.float64) - 1) / 2  # 1-based
        ranks = average_rank[inverse]
        rank_sum = ranks[positive[order]].sum().item()
        return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


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
        order = scores.argsort(descending=True, stable=True)
        sorted_scores, hits = scores[order], positive[order].to(torch.float64)
        last = torch.ones_like(sorted_scores, dtype=torch.bool)  # last row of each distinct score
        last[:-1] = sorted_scores[1:] != sorted_scores[:-1]
        tps = hits.cumsum(0)[last]
        seen = torch.arange(1, len(hits) + 1, dtype=torch.float64)[last]
        precision, recall = tps / seen, tps / n_pos
        steps = torch.diff(recall, prepend=torch.zeros(1, dtype=torch.float64))
        return float((steps * precision).sum())


class _Binned(Metric):
    """Binary ranking metrics on fixed thresholds: constant-size state, in the one all-reduce.

    As torchmetrics' ``BinaryAUROC(thresholds=n)`` / ``BinaryAveragePrecision(thresholds=n)``:
    thresholds ``linspace(0, 1, n)`` (or the given ones), a sample counts at
    threshold t when its probability is ``>= t`` (logits go through a sigmoid).
    """

    higher_is_better = True
    _reductions = {"positive": SUM, "negative": SUM}
    _short: ClassVar[str]

    def __init__(self, thresholds: int | Sequence[float] = 200) -> None:
        if is_int(thresholds):
            if thresholds < 2:
                raise ValueError(f"{type(self).__name__}: thresholds must be >= 2, got {thresholds}")
            grid = torch.linspace(0, 1, thresholds, dtype=torch.float64)
        else:
            grid = torch.as_tensor(list(thresholds), dtype=torch.float64)
            if grid.dim() != 1 or len(grid) < 2 or bool((grid.diff() <= 0).any()):
                raise ValueError(f"{type(self).__name__}: thresholds must be increasing, at least 2, got {thresholds!r}")
        self.thresholds = grid
        self.name = f"{self._short}_binned"
        super().__init__()

    def _initial_shapes(self) -> dict[str, tuple[int, ...]]:
        # bin j holds the samples with exactly j thresholds <= their score
        return {"positive": (len(self.thresholds) + 1,), "negative": (len(self.thresholds) + 1,)}

    def predict(self, y_score: Any) -> torch.Tensor:
        return _classify(y_score, 0.5)

    def update(self, y_pred: Any = None, y_true: Any = None, y_score: Any = None) -> None:
        scores = y_score if y_score is not None else y_pred
        if scores is None or y_true is None:
            raise ValueError(f"{type(self).__name__}: pass y_score (or y_pred) and y_true")
        labels, scores = self._on_state_device(_detached(y_true), _detached(scores))
        scores = _probabilities(scores.reshape(-1).to(torch.float64))
        _check_same_shape(self, scores, labels)
        grid = self.thresholds if self.thresholds.device == scores.device else self.thresholds.to(scores.device)
        if grid is not self.thresholds:
            self.thresholds = grid  # moved once, with the states
        bins = torch.bucketize(scores, grid, right=True)
        positive = labels.reshape(-1) == 1
        self._states["positive"].index_add_(0, bins, positive.to(torch.float64))
        self._states["negative"].index_add_(0, bins, (~positive).to(torch.float64))

    def _curve(self, states):
        # samples at or above threshold j: bins j+1..T
        tp = states["positive"].flip(0).cumsum(0).flip(0)[1:]
        fp = states["negative"].flip(0).cumsum(0).flip(0)[1:]
        return tp, fp, states["positive"].sum(), states["negative"].sum()

    def _empty_mask(self, states):
        return (states["positive"].sum() + states["negative"].sum()) == 0


class BinnedAUROC(_Binned):
    """Binary AUROC on fixed thresholds (torchmetrics' ``BinaryAUROC(thresholds=...)``)."""

    _short = "auroc"

    def _compute(self, states):
        tp, fp, p, n = self._curve(states)
        tpr, fpr = tp / p, fp / n
        # thresholds ascend, so the curve runs from (1, 1) down to (0, 0): integrate backwards
        return -torch.trapezoid(tpr, fpr)


class BinnedAveragePrecision(_Binned):
    """Binary average precision on fixed thresholds (torchmetrics' ``BinaryAveragePrecision(thresholds=...)``)."""

    _short = "average_precision"

    def _compute(self, states):
        tp, fp, p, _ = self._curve(states)
        precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1e-300), 1.0)
        recall = tp / p
        precision = torch.cat([precision, precision.new_ones(1)])
        recall = torch.cat([recall, recall.new_zeros(1)])
        return -((recall[1:] - recall[:-1]) * precision[:-1]).sum()


# --------------------------------------------------------------------------- #
# Regression
# --------------------------------------------------------------------------- #


class _Regression(Metric):
    """Regression metrics over every element, with a NaN policy.

    Args:
        nan_strategy: ``"disable"`` (the default: NaN propagates, as numpy
            would), ``"error"`` (raise at ``calculate()`` on every rank when a
            prediction or target was NaN on any rank), ``"warn"`` or
            ``"ignore"`` (leave those pairs out, with or without a warning).
    """

    _reductions = {"total": SUM, "count": SUM, "nans": SUM}
    higher_is_better = False

    def __init__(self, nan_strategy: str = "disable") -> None:
        self.nan_strategy = _check_nan_strategy(type(self).__name__, nan_strategy)
        super().__init__()

    def _pairs(self, states, y_pred, y_true) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        _check_same_shape(self, y_pred, y_true)
        pred = y_pred.reshape(-1).to(torch.float64)
        true = y_true.reshape(-1).to(torch.float64)
        if self.nan_strategy == "disable":
            return pred, true, None
        nan = pred.isnan() | true.isnan()
        states["nans"] += nan.sum()
        if self.nan_strategy == "error":
            return pred, true, None
        return pred.masked_fill(nan, 0.0), true.masked_fill(nan, 0.0), ~nan

    def _accumulate(self, states, y_pred, y_true) -> None:
        pred, true, keep = self._pairs(states, y_pred, y_true)
        error = self._error(pred - true)
        states["total"] += error.sum()
        states["count"] += true.numel() if keep is None else keep.sum()

    def _check_states(self, states: Mapping[str, torch.Tensor]) -> None:
        _report_nans(type(self).__name__, self.nan_strategy, states["nans"])

    def _batch_config(self) -> tuple:
        return (self.nan_strategy,)

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


class RMSE(MSE):
    """Root mean squared error over every element (scikit-learn's ``root_mean_squared_error``)."""

    name = "rmse"

    def _compute(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return (states["total"] / states["count"]).sqrt()


class MAE(_Regression):
    """Mean absolute error over every element (scikit-learn's ``mean_absolute_error``)."""

    name = "mae"

    @staticmethod
    def _error(diff: torch.Tensor) -> torch.Tensor:
        return diff.abs()


class R2(_Regression):
    """Coefficient of determination over every element (scikit-learn's ``r2_score`` on 1-D data).

    From float64 sums of y, y**2 and squared residuals: exact to rounding
    unless the targets' mean is huge against their spread. A constant target
    gives 1.0 for a perfect fit and 0.0 otherwise, as scikit-learn does.
    """

    name = "r2"
    higher_is_better = True
    _reductions = {"residual": SUM, "total": SUM, "squares": SUM, "count": SUM, "nans": SUM}

    def _accumulate(self, states, y_pred, y_true) -> None:
        pred, true, keep = self._pairs(states, y_pred, y_true)
        states["residual"] += (pred - true).square().sum()
        states["total"] += true.sum()
        states["squares"] += true.square().sum()
        states["count"] += true.numel() if keep is None else keep.sum()

    def _compute(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        n = states["count"]
        spread = (states["squares"] - states["total"].square() / n).clamp(min=0.0)
        r2 = 1 - states["residual"] / spread.clamp(min=1e-300)
        constant = torch.where(states["residual"] == 0, 1.0, 0.0).to(r2)
        return torch.where(spread > 0, r2, constant)


# --------------------------------------------------------------------------- #
# Language modelling
# --------------------------------------------------------------------------- #


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


# --------------------------------------------------------------------------- #
# Several metrics at once
# --------------------------------------------------------------------------- #


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


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


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
    scores = _detached(y_score)
    if scores.dim() >= 2 and scores.shape[-1] > 1:
        return scores.argmax(-1)
    scores = scores.reshape(scores.shape[:-1] if scores.dim() >= 2 else scores.shape)
    return (_probabilities(scores) >= threshold).long()


def _check_num_labels(metric: Any, num_labels: Any) -> int | None:
    if num_labels is not None and (not is_int(num_labels) or num_labels < 1):
        raise ValueError(f"{type(metric).__name__}: num_labels must be an int >= 1 or None, got {num_labels!r}")
    return num_labels


def _classify_labels(y_score: Any, threshold: float) -> torch.Tensor:
    """Multilabel predictions: each score (a probability, or a logit) ``>= threshold``, shape kept."""
    return (_probabilities(_detached(y_score)) >= threshold).long()


def _label_matrices(metric: Any, y_pred: torch.Tensor, y_true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions and labels as (n, num_labels) matrices, or a clear error."""
    labels = metric.num_labels
    if y_true.dim() != 2 or y_true.shape[1] != labels or y_pred.shape != y_true.shape:
        raise ValueError(
            f"{type(metric).__name__}(num_labels={labels}): y_true and y_pred (or y_score) must both have shape "
            f"(n, {labels}), got {tuple(y_true.shape)} and {tuple(y_pred.shape)}"
        )
    return y_pred, y_true


def _check_same_shape(metric: Any, y_pred: torch.Tensor, y_true: torch.Tensor) -> None:
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
