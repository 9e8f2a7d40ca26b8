"""Except: forward values to an accumulator except at excluded call indices."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..options import is_int
from .protocol import Accumulator, Contribution


def _index_list(name: str, value: Any) -> list[int] | None:
    if value is None:
        return None
    items = value.tolist() if isinstance(value, torch.Tensor) else value
    if is_int(items):
        return [items]
    if isinstance(value, torch.Tensor) and (value.dim() != 1 or value.is_floating_point()):
        raise ValueError(f"Except: {name} must be an int or a 1-D integer tensor, got {value.dim()}-D {value.dtype}")
    if not isinstance(items, Sequence) or not all(is_int(i) for i in items):
        raise ValueError(f"Except: {name} must be an int, a list of ints or a 1-D integer tensor, got {value!r}")
    return list(items)


class Except(Accumulator):
    """Forward every value to ``accumulator`` except those at excluded call indices.

    Call ``i`` (0-based since the last reset, counted per rank) is excluded when
    it lies in any inclusive range ``[begin[k], end[k]]``; with ``period`` set,
    when ``i % period`` does. ``begin`` defaults to 0 and ``end`` to ``begin``.

    Raises:
        ValueError: negative or non-integer bounds, ``end < begin``, begin and
            end of different lengths, ``period < 1``, or a range outside the period.
    """

    def __init__(self, accumulator: Accumulator, begin: Any = None, end: Any = None, period: int | None = None) -> None:
        begins = _index_list("begin", begin)
        begins = [0] if begins is None else begins
        ends = _index_list("end", end)
        ends = list(begins) if ends is None else ends
        if not begins or not ends:
            raise ValueError(f"Except: begin and end must not be empty, got begin={begin!r}, end={end!r}")
        if len(begins) != len(ends):
            raise ValueError(f"Except: begin and end must have equal lengths, got {len(begins)} and {len(ends)}")
        for b, e in zip(begins, ends):
            if b < 0 or e < 0:
                raise ValueError(f"Except: bounds must be >= 0, got begin={b}, end={e}")
            if e < b:
                raise ValueError(f"Except: end must be >= begin, got begin={b}, end={e}")
        if period is not None:
            if not is_int(period) or period < 1:
                raise ValueError(f"Except: period must be an int >= 1, got {period!r}")
            if max(ends) >= period:
                raise ValueError(f"Except: ranges must lie inside the period: end={max(ends)} >= period={period}")
        self.accumulator = accumulator
        self.ranges = list(zip(begins, ends))
        self.period = period
        self._index = 0

    def excluded(self, index: int) -> bool:
        """Whether call ``index`` is left out."""
        i = index % self.period if self.period else index
        return any(b <= i <= e for b, e in self.ranges)

    def update(self, *args: Any, **kwargs: Any) -> None:
        if not self.excluded(self._index):
            self.accumulator.update(*args, **kwargs)
        self._index += 1

    def extend(self, *args: Any, **kwargs: Any) -> None:
        """Forward ``extend`` as one call (one index)."""
        if not self.excluded(self._index):
            self.accumulator.extend(*args, **kwargs)
        self._index += 1

    def value(self) -> Any:
        return self.accumulator.value()

    def reset(self) -> None:
        self.accumulator.reset()
        self._index = 0

    def state_dict(self) -> dict[str, Any]:
        return {"index": self._index, "accumulator": self.accumulator.state_dict()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self._index = int(state_dict["index"])
        self.accumulator.load_state_dict(state_dict["accumulator"])

    def _spec(self) -> tuple:
        return self.accumulator._spec()

    def _tensor_device(self) -> torch.device | None:
        return self.accumulator._tensor_device()

    def _local(self, spec: tuple) -> Any:
        return self.accumulator._local(spec)

    def _contribute(self, spec: tuple) -> Contribution:
        return self.accumulator._contribute(spec)

    def _finish(self, spec: tuple, sums: list[torch.Tensor], maxes: list[torch.Tensor], blobs: list[bytes] | None) -> Any:
        return self.accumulator._finish(spec, sums, maxes, blobs)

    @property
    def _growable(self) -> bool:  # type: ignore[override]
        return self.accumulator._growable
