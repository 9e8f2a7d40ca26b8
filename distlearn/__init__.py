"""distlearn: exact distributed metrics and a readable training loop on PyTorch + Accelerate.

The public names are imported on first use (PEP 562), so ``distlearn --help`` and the
config checks start without importing torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__version__ = "0.1.0"

# public name -> the module defining it
_EXPORTS = {
    **dict.fromkeys(["Cat", "Except", "List", "Max", "Mean", "Min", "Sum", "calculate"], "accumulators"),
    **dict.fromkeys(["BackwardLearner", "NonFiniteLossError"], "training.learner"),
    **dict.fromkeys(["EarlyStopping", "Selection"], "training.selection"),
    **dict.fromkeys(
        ["AUROC", "F1", "MAE", "MSE", "R2", "RMSE", "Accuracy", "AveragePrecision", "BinnedAUROC",
         "BinnedAveragePrecision", "ConfusionMatrix", "FBeta", "Metrics", "Perplexity", "Precision", "Recall",
         "evaluate"],
        "metrics",
    ),
    "drop_padding": "training.padding",
    "load_run": "experiment.saved_run",  # a saved run rebuilt, to evaluate or predict (not metrics' `evaluate`)
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        if importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module 'distlearn' has no attribute {name!r}")
        return importlib.import_module(f".{name}", __name__)  # `distlearn.learner` without importing it first
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
