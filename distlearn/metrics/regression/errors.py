"""Regression metrics over every element, with a NaN policy: MSE, RMSE, MAE, R2."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ...accumulators.protocol import SUM
from ...accumulators.values import check_nan_strategy, report_nans
from ..base import Metric
from ..functional.inputs import _check_same_shape


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
        self.nan_strategy = check_nan_strategy(type(self).__name__, nan_strategy)
        super().__init__()

    def _pairs(self, states, y_pred, y_true) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        _check_same_shape(type(self).__name__, y_pred, y_true)
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
        report_nans(type(self).__name__, self.nan_strategy, states["nans"])

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
    gives 1.0 for a perfect fit and 0.0 otherwise, as scikit-learn does. A NaN
    prediction or target gives NaN under the default ``nan_strategy="disable"``.
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
        result = torch.where(spread > 0, r2, constant)
        # A NaN in the sums (nan_strategy="disable") must stay NaN, as in MSE/MAE: the
        # comparisons above are False for NaN and would turn it into 0.0.
        return torch.where(spread.isnan() | states["residual"].isnan(), torch.nan, result)
