"""Reading numbers out of a training record, shared by the summary, ``curves.png`` and W&B logging.

The best epoch is chosen by one rule (:func:`~distlearn.training.selection.best_point`, re-exported
here), for the summary, ``curves.png`` and ``run.checkpoint.keep_best`` alike, by the direction the
metric itself declares (its ``higher_is_better``); the loss is lower-is-better.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..training.selection import best_point, finite  # one rule for "best", shared with keep_best

__all__ = ["best_epoch", "best_point", "epochs_in_order", "finite"]


def best_epoch(epochs: Sequence[tuple[int, Mapping[str, Any]]], part: str,
               higher_is_better: bool | None) -> tuple[int, float, str] | None:
    """The best (0-based epoch, value, "score" or "loss") of ``part`` ("val" or "test") over the
    evaluated epochs: the primary score by ``higher_is_better``, or the loss (lowest) without a metric
    (None); the rule ``run.checkpoint.keep_best`` follows. None when no epoch has a finite value."""
    kind = "loss" if higher_is_better is None else "score"
    points = [(i, finite((e.get(f"{part}_result") or {}).get(f"{part}_{kind}"))) for i, e in epochs]
    points = [(i, v) for i, v in points if v is not None]
    if not points:
        return None
    epoch, value = best_point(points, bool(higher_is_better))
    return epoch, value, kind


def epochs_in_order(record: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    """``record["training"]`` as (0-based epoch, summary) pairs in order (keys may be ints or strings)."""
    return sorted(((int(k), v) for k, v in (record.get("training") or {}).items()), key=lambda p: p[0])
