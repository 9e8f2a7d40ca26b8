"""distlearn: exact distributed metrics and a readable training loop on PyTorch + Accelerate."""

from .accumulators import Cat, Except, List, Max, Mean, Min, Sum, calculate
from .learner import BackwardLearner, NonFiniteLossError
from .metrics import F1, MAE, MSE, Accuracy, evaluate

__all__ = ["BackwardLearner", "NonFiniteLossError", "F1", "MAE", "MSE", "Accuracy", "Cat", "Except", "List", "Max", "Mean", "Min", "Sum", "calculate", "evaluate"]
__version__ = "0.1.0"
