"""distlearn: exact distributed metrics and a readable training loop on PyTorch + Accelerate."""

from .accumulators import Cat, Except, List, Max, Mean, Min, Sum, calculate
from .learner import BackwardLearner, NonFiniteLossError
from .metrics import (
    AUROC,
    F1,
    MAE,
    MSE,
    R2,
    RMSE,
    Accuracy,
    AveragePrecision,
    BinnedAUROC,
    BinnedAveragePrecision,
    ConfusionMatrix,
    FBeta,
    Metrics,
    Perplexity,
    Precision,
    Recall,
    evaluate,
)
from .padding import drop_padding

__all__ = [
    "AUROC",
    "F1",
    "MAE",
    "MSE",
    "R2",
    "RMSE",
    "Accuracy",
    "AveragePrecision",
    "BackwardLearner",
    "BinnedAUROC",
    "BinnedAveragePrecision",
    "Cat",
    "ConfusionMatrix",
    "Except",
    "FBeta",
    "List",
    "Max",
    "Mean",
    "Metrics",
    "Min",
    "NonFiniteLossError",
    "Perplexity",
    "Precision",
    "Recall",
    "Sum",
    "calculate",
    "drop_padding",
    "evaluate",
]
__version__ = "0.1.0"
