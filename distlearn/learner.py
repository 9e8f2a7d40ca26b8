"""Kept for imports and config class paths written before the redesign: the learner lives in ``distlearn.training``."""

from .training.learner import BackwardLearner, NonFiniteLossError

__all__ = ["BackwardLearner", "NonFiniteLossError"]
