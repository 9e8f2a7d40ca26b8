"""Regression metrics: mean squared, root mean squared and absolute errors, R2."""

from .errors import MAE, MSE, R2, RMSE

__all__ = ["MAE", "MSE", "R2", "RMSE"]
