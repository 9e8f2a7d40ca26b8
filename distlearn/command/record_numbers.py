"""Reading numbers out of a training record, shared by the summary, ``curves.png`` and W&B logging.

The best epoch is chosen by one rule (:func:`~distlearn.training.selection.best_point`, re-exported
here), for the summary, ``curves.png`` and ``run.checkpoint.keep_best`` alike, by the direction the
metric itself declares (its ``higher_is_better``); the loss is lower-is-better.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..training.selection import best_point, finite  # one rule for "best", shared with keep_best

__all__ = ["best_point", "epochs_in_order", "finite"]


def epochs_in_order(record: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    """``record["training"]`` as (0-based epoch, summary) pairs in order (keys may be ints or strings)."""
    return sorted(((int(k), v) for k, v in (record.get("training") or {}).items()), key=lambda p: p[0])
