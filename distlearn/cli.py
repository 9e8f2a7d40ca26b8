"""Kept for imports and entry points written before the redesign: the command lives in ``distlearn.command.cli``."""

from .command.cli import main, train

__all__ = ["main", "train"]
