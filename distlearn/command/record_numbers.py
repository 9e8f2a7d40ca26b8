"""Reading numbers out of a training record, shared by the summary, ``curves.png`` and W&B logging.

The best test epoch is chosen here once, for the summary and ``curves.png`` alike, by the
direction the metric itself declares (its ``higher_is_better``); the loss is lower-is-better.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["best_point", "epochs_in_order", "finite"]


def finite(value: Any) -> float | None:
    """``value`` as a finite Python float (0-d tensors and numpy scalars too), else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several values
        return None
    return number if math.isfinite(number) else None


def epochs_in_order(record: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    """``record["training"]`` as (0-based epoch, summary) pairs in order (keys may be ints or strings)."""
    return sorted(((int(k), v) for k, v in (record.get("training") or {}).items()), key=lambda p: p[0])


def best_point(points: Sequence[tuple[int, float]], higher_is_better: bool) -> tuple[int, float]:
    """The (epoch, value) pair with the best value: the highest when ``higher_is_better``, else the
    lowest; the first such epoch on a tie.

    Args:
        points: (epoch, value) pairs, at least one.
        higher_is_better: The metric's ``higher_is_better`` (False for a loss).
    """
    return (max if higher_is_better else min)(points, key=lambda p: p[1])
