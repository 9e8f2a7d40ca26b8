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

The package, as torchmetrics lays it out: :mod:`.base` (:class:`Metric`),
:mod:`.classification`, :mod:`.regression`, :mod:`.text`, :mod:`.collection`
(:class:`Metrics`, :func:`is_metric`, :func:`evaluate`) and :mod:`.functional`
(the math, as functions of tensors).
"""

from __future__ import annotations

from .base import Metric
from .classification import (
    AUROC,
    F1,
    Accuracy,
    AveragePrecision,
    BinnedAUROC,
    BinnedAveragePrecision,
    ConfusionMatrix,
    FBeta,
    Precision,
    Recall,
)
from .collection import Metrics, evaluate, is_metric
from .regression import MAE, MSE, R2, RMSE
from .text import Perplexity

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
