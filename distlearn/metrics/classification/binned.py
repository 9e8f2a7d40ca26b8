"""Binary ranking metrics on fixed thresholds: a constant-size state, reduced in the one all-reduce."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from ...accumulators.protocol import SUM
from ...options import is_int
from ..base import Metric
from ..functional.inputs import _check_same_shape, _classify, _detached, _probabilities


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
        _check_same_shape(type(self).__name__, scores, labels)
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
