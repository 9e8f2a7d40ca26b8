"""The base of metrics: fixed-shape float64 states, reduced with every other accumulator."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from ..accumulators.protocol import SUM
from ..accumulators.tensor import TensorAccumulator
from ..accumulators.values import state_device
from .functional.inputs import _detached


class Metric(TensorAccumulator):
    """Base of metrics: fixed-shape float64 states created at construction.

    Calling a metric updates it with a batch and returns the local running
    value (a float64 0-d tensor, no host sync); :meth:`calculate` returns the
    exact global value as a Python float.
    """

    name: str
    higher_is_better: ClassVar[bool]

    def reset(self) -> None:
        """Zero the states in place, on the device they live on (no trip to the host)."""
        states = getattr(self, "_states", None)
        shapes = self._initial_shapes()
        if states is not None and set(states) == set(shapes) and all(
            tuple(s.shape) == shapes[n] for n, s in states.items()
        ):
            for name, state in states.items():
                state.fill_(0.0 if self._reductions[name] == SUM else -math.inf)  # a kernel argument, no copy
            return
        device = getattr(self, "_device", torch.device("cpu"))
        super().reset()
        self._device = device
        self._kind = "float64"
        self._states = self._neutral(shapes, state_device(device))

    def _initial_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: () for name in self._reductions}

    @classmethod
    def gives_scalar(cls, average: Any = None) -> bool:
        """Whether the value is one number, as choosing an epoch on it needs (``keep_best``, early stopping):
        not one score per label (``average="none"``). Known from the class and its ``average`` alone."""
        return average != "none"

    @property
    def scalar(self) -> bool:
        """Whether this metric's value is one number (:meth:`gives_scalar`)."""
        return type(self).gives_scalar(getattr(self, "average", None))

    def predict(self, y_score: Any) -> torch.Tensor:
        """Predictions from model outputs (identity unless the metric says otherwise)."""
        return _detached(y_score)

    def update(self, y_pred: Any = None, y_true: Any = None, y_score: Any = None) -> None:
        """Accumulate one batch; ``y_pred`` is derived from ``y_score`` when not given."""
        if y_true is None:
            raise ValueError(f"{type(self).__name__}: y_true is required")
        if y_pred is None:
            if y_score is None:
                raise ValueError(f"{type(self).__name__}: pass y_pred or y_score")
            y_pred = self.predict(y_score)
        y_true, y_pred = self._on_state_device(_detached(y_true), _detached(y_pred))
        self._accumulate(self._states, y_pred, y_true)

    def _on_state_device(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        device = tensors[0].device
        if device != self._device:  # first batch on a new device: the states follow, once
            self._device = device
            self._states = {n: s.to(state_device(device)) for n, s in self._states.items()}
        here = next(iter(self._states.values())).device
        return tuple(t if t.device == here else t.to(here) for t in tensors)

    def _accumulate(self, states: dict[str, torch.Tensor], y_pred: torch.Tensor, y_true: torch.Tensor) -> None:
        raise NotImplementedError

    def _convert_global(self, result: torch.Tensor, kind: str, device: torch.device) -> Any:
        return float(result)

    # Many metrics of one kind finished at once: one row of states each.

    def _batch_config(self) -> tuple | None:
        """What metrics finished together must share (their settings); None: finish alone.

        Only metrics whose ``_compute``, ``_check_states`` and ``_empty_mask``
        accept states with a leading batch dimension return a tuple.
        """
        return None

    @classmethod
    def _batch_values(cls, accs: Sequence[Metric], specs: Sequence[tuple], block: torch.Tensor) -> list[Any] | None:
        """The values of metrics of one kind and settings from ``block`` (one row of states each)."""
        first, shapes = accs[0], specs[0][2]
        widths = [math.prod(shape) for _, shape in shapes]
        states = {
            name: column.reshape(len(accs), *shape)
            for (name, shape), column in zip(shapes, block.split(widths, dim=1))
        }
        empty = first._empty_mask(states)
        if empty is not None and bool(empty.any()):
            return None  # warnings to give: the careful path, one by one
        first._check_states(states)
        return first._compute(states).tolist()

    def _empty_value(self) -> float:
        return float("nan")

    def evaluate(self, y_true: Any = None, y_pred: Any = None, y_score: Any = None) -> Any:
        """One-shot value on the given data: local, no collective, this metric's state untouched."""
        fresh = copy.deepcopy(self)
        fresh.reset()
        fresh.update(y_pred=y_pred, y_true=y_true, y_score=y_score)
        return fresh._local(fresh._spec())
