"""Sum, Mean, Max and Min: the aggregates, with a NaN policy and Python numbers kept on the host."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from ..options import is_number
from .protocol import MAX, SUM
from .tensor import TensorAccumulator
from .values import as_tensor, check_nan_strategy, f64, report_nans, to_result_device, torch_dtype


class _Aggregate(TensorAccumulator):
    """Sum, Mean, Max and Min: a NaN policy and Python numbers kept on the host side.

    ``nan_strategy`` (torchmetrics' names):

    - ``"disable"`` (the default): NaN propagates, as in numpy and torch on the
      concatenated data (a NaN anywhere gives NaN there on every rank).
    - ``"error"``: :func:`calculate` raises ``ValueError`` on every rank when
      any rank saw a NaN. Checked at ``calculate()`` only, never per update
      (that would sync the device), so local ``value()`` may still show NaN.
    - ``"warn"``: NaN values are left out, with a warning at ``calculate()``.
    - ``"ignore"``: NaN values are left out silently.
    """

    _counts_nans: ClassVar[bool] = False  # keep a NaN count state even with "disable"

    def __init__(self, nan_strategy: str = "disable") -> None:
        self.nan_strategy = check_nan_strategy(type(self).__name__, nan_strategy)
        reductions = dict(type(self)._reductions)
        if nan_strategy == "disable" and not self._counts_nans:
            reductions.pop("nans", None)
        self._reductions = reductions
        super().__init__()

    @property
    def _drops_nans(self) -> bool:
        return self.nan_strategy in ("warn", "ignore")

    def _nan_mask(self, x: torch.Tensor, states: dict[str, torch.Tensor], rows: bool) -> torch.Tensor | None:
        """Where ``x`` (float64) is NaN, counted into the ``nans`` state; None when nothing is counted."""
        if "nans" not in states:
            return None
        nan = x.isnan()
        states["nans"] += nan.sum(0) if rows else nan
        return nan

    def _check_states(self, states: Mapping[str, torch.Tensor]) -> None:
        if "nans" in states:
            report_nans(self._name, self.nan_strategy, states["nans"])

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "nan_strategy": self.nan_strategy}


class Sum(_Aggregate):
    """Elementwise sum of everything accumulated.

    State is float64 whatever the input dtype. The result is a Python number
    for Python numbers; for tensors, float64 (int64 for integer and bool
    inputs) of the input's shape on the input's device. Integer sums are exact
    up to 2**53. ``+inf`` on one rank and ``-inf`` on another give NaN, as
    one process would.

    Args:
        nan_strategy: ``"disable"`` (NaN propagates), ``"error"``, ``"warn"``
            or ``"ignore"``; see :class:`_Aggregate`.
    """

    _reductions = {"total": SUM, "nans": SUM}

    def update(self, value: Any) -> None:
        """Add one value (a number or a tensor of any fixed shape)."""
        if is_number(value) and self._states is not None and not self._value_shape():
            # A Python number into existing scalar state: host arithmetic, no tensor made or copied.
            states = self._states_for((), "float" if isinstance(value, float) else "int", self._device)
            if isinstance(value, float) and math.isnan(value) and "nans" in states:
                states["nans"] += 1
                if self._drops_nans:
                    return
            states["total"] += value
            return
        tensor, kind = as_tensor(value)
        states = self._states_for(tensor.shape, kind, tensor.device)
        x = f64(tensor, states["total"])
        nan = self._nan_mask(x, states, rows=False) if x.is_floating_point() and tensor.is_floating_point() else None
        if nan is not None and self._drops_nans:
            x = x.masked_fill(nan, 0.0)
        states["total"] += x

    def extend(self, values: Any) -> None:
        """Add every row of ``values`` (dim 0) as one value each."""
        tensor, kind = as_tensor(values)
        states = self._states_for(tensor.shape[1:], kind, tensor.device)
        x = f64(tensor, states["total"])
        nan = self._nan_mask(x, states, rows=True) if tensor.is_floating_point() else None
        if nan is not None and self._drops_nans:
            x = x.masked_fill(nan, 0.0)
        states["total"] += x.sum(0)

    def _compute(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return states["total"]

    @classmethod
    def _batch_values(cls, accs: Sequence[Sum], specs: Sequence[tuple], block: torch.Tensor) -> list[Any] | None:
        """Python-number sums of many accumulators at once (rows of ``block``: their states); None: one by one."""
        rows = block.cpu().numpy()  # one read of the block (one device sync), then host arithmetic
        if rows.shape[1] > 1 and rows[:, 1].any():  # NaN counts to report: the careful path
            return None
        return [int(v) if spec[1] == "int" else v for v, spec in zip(rows[:, 0].tolist(), specs)]

    def _convert(self, result: torch.Tensor, kind: str, device: torch.device) -> Any:
        if kind not in ("int", "float") and not torch_dtype(kind).is_floating_point:
            return result.to(device=device, dtype=torch.int64)
        return super()._convert(result, kind, device)

    def _empty_value(self) -> Any:
        return 0


class Mean(_Aggregate):
    """Elementwise (weighted) mean of everything accumulated.

    ``mean(batch_loss, weight=batch_size)`` gives the exact per-sample mean
    over uneven batches. Sums are float64 whatever the input dtype. A weight
    of 0 contributes nothing, whatever the value (an empty batch's NaN loss
    included). A total weight of zero gives NaN with a warning. A Python weight (the default 1
    too) stays on the host: updating never copies host data to the device.

    Args:
        nan_strategy: ``"disable"`` (NaN propagates), ``"error"``, ``"warn"``
            or ``"ignore"`` (a NaN value or weight is left out with its pair, as
            torchmetrics' ``MeanMetric``); ``"error"`` raises on either.
    """

    _reductions = {"total": SUM, "weight": SUM, "nans": SUM}

    def update(self, value: Any, weight: Any = 1) -> None:
        """Add one value with a weight (a number, or a tensor broadcastable to the value).

        A weight of 0 adds nothing, whatever the value: an empty batch's NaN loss
        with ``weight=0`` leaves the mean as it was (and is not counted as a NaN).
        A Python 0 skips the update on the host; a tensor weight is masked
        elementwise on the device (no host sync).
        """
        if is_number(weight) and weight == 0:
            if isinstance(value, torch.Tensor):  # shape and type still checked (metadata only)
                kind = str(value.dtype).removeprefix("torch.")
                self._states_for(value.shape, kind, value.device)
            elif not (is_number(value) and self._states is not None and not self._value_shape()):
                tensor, _ = as_tensor(value)
                self._states_for(tensor.shape, "float", tensor.device)
            return
        if is_number(value) and is_number(weight) and self._states is not None and not self._value_shape():
            states = self._states_for((), "float", self._device)
            if (math.isnan(value) or math.isnan(weight)) and "nans" in states:
                states["nans"] += 1
                if self._drops_nans:
                    return
            states["total"] += value * weight
            states["weight"] += weight
            return
        tensor, kind = as_tensor(value)
        states = self._states_for(tensor.shape, "float" if kind in ("int", "float") else kind, tensor.device)
        x = f64(tensor, states["total"])
        if is_number(weight):  # host number: an argument of the kernels, never a tensor on the device
            w = float(weight)
            if math.isnan(w) and "nans" in states:  # a NaN weight: every element is a NaN pair
                states["nans"] += 1
                if self._drops_nans:
                    return
            nan = self._nan_mask(x, states, rows=False)
            if nan is not None and self._drops_nans:
                states["total"].add_(x.masked_fill(nan, 0.0), alpha=w)
                states["weight"].add_((~nan).to(torch.float64), alpha=w)
            else:
                states["total"].add_(x, alpha=w)
                states["weight"] += w
            return
        w = f64(as_tensor(weight)[0], states["weight"])
        self._add_weighted(states, x, w, rows=False)

    def extend(self, values: Any, weights: Any = None) -> None:
        """Add every row of ``values`` (dim 0) as one value, optionally weighted per row.

        Rows of weight 0 add nothing, whatever their values (see :meth:`update`).
        """
        tensor, kind = as_tensor(values)
        states = self._states_for(tensor.shape[1:], "float" if kind in ("int", "float") else kind, tensor.device)
        rows = f64(tensor, states["total"])
        if weights is None:
            nan = self._nan_mask(rows, states, rows=True)
            if nan is not None and self._drops_nans:
                states["total"] += rows.masked_fill(nan, 0.0).sum(0)
                states["weight"] += (~nan).sum(0)
            else:
                states["total"] += rows.sum(0)
                states["weight"] += rows.shape[0]
            return
        w = f64(as_tensor(weights)[0], states["weight"])
        w = torch.broadcast_to(w.reshape(w.shape + (1,) * (rows.dim() - w.dim())), rows.shape)
        self._add_weighted(states, rows, w, rows=True)

    def _add_weighted(self, states: dict[str, torch.Tensor], x: torch.Tensor, w: torch.Tensor, rows: bool) -> None:
        """Add ``x * w`` and ``w`` (summed over dim 0 when ``rows``), leaving out where ``w == 0``.

        NaN or inf times 0 is NaN, so zero weights are masked, not multiplied: with
        ``torch.where`` on the device, never a host sync.
        """
        counts = w != 0
        x = torch.where(counts, x, 0.0)
        if "nans" in states:  # a NaN of weight 0 is not an input: not counted, not reported
            nan = x.isnan() | w.isnan()  # (masked values are 0 now); a NaN weight drops its value too
            states["nans"] += nan.sum(0) if rows else nan
            if self._drops_nans:
                x, w = x.masked_fill(nan, 0.0), torch.where(nan, 0.0, w)
        total, weight = x * w, w
        if rows:
            total, weight = total.sum(0), weight.sum(0)
        states["total"] += total
        states["weight"] += weight

    def _compute(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return states["total"] / states["weight"]

    @classmethod
    def _batch_values(cls, accs: Sequence[Mean], specs: Sequence[tuple], block: torch.Tensor) -> list[Any] | None:
        """Python-number means of many accumulators at once; None: finish them one by one."""
        # One read of the block (one device sync), then host arithmetic: after a collective each
        # tensor op costs more than the Python below (measured on 2 ranks).
        width = block.shape[1]
        flat = block.cpu().numpy().reshape(-1).tolist()
        totals, weights = flat[0::width], flat[1::width]
        if 0.0 in weights or (width > 2 and any(flat[2::width])):
            return None  # an empty mean to warn about or NaN counts to report: the careful path
        return [total / weight for total, weight in zip(totals, weights)]  # IEEE division, as torch's: same bits

    def _empty_mask(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return states["weight"] == 0

    def _convert(self, result: torch.Tensor, kind: str, device: torch.device) -> Any:
        return result.item() if kind == "float" else to_result_device(result, device)


class Max(_Aggregate):
    """Elementwise maximum of everything accumulated on all ranks.

    The result has the input's dtype (integers exact up to 2**53). With
    nothing accumulated anywhere it is NaN with a warning. A NaN on any rank
    gives NaN (as ``torch.max`` on the concatenated data), unless
    ``nan_strategy`` leaves NaN out: the running extreme ignores NaN and a
    count of NaN values rides in the sum reduction, because a MAX all-reduce
    (gloo's) keeps a NaN only when rank 0 holds it.

    Args:
        nan_strategy: ``"disable"`` (NaN propagates), ``"error"``, ``"warn"``
            or ``"ignore"``; see :class:`_Aggregate`.
    """

    _reductions = {"extreme": MAX, "count": SUM, "nans": SUM}
    _scalar_states = frozenset({"count"})
    _counts_nans = True
    _sign = 1.0

    def update(self, value: Any) -> None:
        """Take one value into the running extreme."""
        tensor, kind = as_tensor(value)
        states = self._states_for(tensor.shape, kind, tensor.device)
        x = f64(tensor, states["extreme"])
        if tensor.is_floating_point():
            self._nan_mask(x, states, rows=False)
        torch.fmax(states["extreme"], x if self._sign > 0 else -x, out=states["extreme"])
        states["count"] += 1

    def extend(self, values: Any) -> None:
        """Take every row of ``values`` (dim 0) into the running extreme."""
        tensor, kind = as_tensor(values)
        states = self._states_for(tensor.shape[1:], kind, tensor.device)
        if tensor.shape[0]:
            rows = f64(tensor, states["extreme"])
            if tensor.is_floating_point():
                nan = self._nan_mask(rows, states, rows=True)
                rows = rows.masked_fill(nan, -math.inf if self._sign > 0 else math.inf)
            torch.fmax(states["extreme"], (self._sign * rows).amax(0), out=states["extreme"])
        states["count"] += tensor.shape[0]

    def _compute(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        result = self._sign * states["extreme"]
        if self._drops_nans:  # only NaN seen at an element: nothing there
            result = torch.where(states["nans"] >= states["count"], torch.nan, result)
        else:
            result = torch.where(states["nans"] > 0, torch.nan, result)
        return torch.where(states["count"] > 0, result, torch.nan)

    def _empty_mask(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return states["count"] == 0

    def _convert(self, result: torch.Tensor, kind: str, device: torch.device) -> Any:
        if kind in ("int", "float"):
            return super()._convert(result, kind, device)
        return result.to(device=device, dtype=torch_dtype(kind))


class Min(Max):
    """Elementwise minimum of everything accumulated on all ranks (reduced as max of -x)."""

    _sign = -1.0
