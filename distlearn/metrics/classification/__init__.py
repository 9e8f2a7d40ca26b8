"""Classification metrics: accuracy, scores from confusion counts, exact and binned ranking metrics."""

from .accuracy import Accuracy
from .binned import BinnedAUROC, BinnedAveragePrecision
from .precision_recall import F1, ConfusionMatrix, FBeta, Precision, Recall
from .ranking import AUROC, AveragePrecision

__all__ = [
    "AUROC",
    "F1",
    "Accuracy",
    "AveragePrecision",
    "BinnedAUROC",
    "BinnedAveragePrecision",
    "ConfusionMatrix",
    "FBeta",
    "Precision",
    "Recall",
]
