"""Accumulators: local partial state on each rank, exact global values on demand.

Calling an accumulator accumulates locally (no collective, no host sync) and
returns the local running value. :func:`calculate` is the only collective: it
reduces any number of accumulators and metrics across ranks in a fixed,
small number of collectives and returns values identical on every rank.

How :func:`calculate` talks to the other ranks:

1. One ``all_reduce(SUM)`` of a float64 buffer of fixed length: a signature of
   what this rank is reducing (kinds, shapes, result types), the byte size of
   this rank's List/Cat payload, and the first ``_INLINE`` sum-like numbers.
   Its length never depends on the accumulators, so ranks that diverge cannot
   crash gloo (a length mismatch aborts the process) and every rank sees the
   disagreement. Sums that do not fit inline go in one more ``all_reduce``.
2. One ``all_reduce(MAX)`` for all Max/Min states (Min as max of -x), if any.
   The running extremes skip NaN and a NaN count rides in the sums: a MAX
   all-reduce (gloo's) keeps a NaN only when rank 0 holds it.
3. One ``all_gather`` of a byte buffer for all List/Cat states, if any.

The Python work per accumulator is kept small, because it is what a
``calculate()`` of many scalars costs beyond the collective: specs and
contributions are cached while states keep their shapes, scalar states are
stacked in one call, and runs of accumulators of one kind and settings (Sum,
Mean, Accuracy, F1, MSE, ...) are finished in one batched tensor pass.
Collections (:class:`~distlearn.metrics.Metrics`) are expanded into their
members, so they ride in the same collectives.

Which device reduces: the states' device when the group's backend reduces
there (``"cuda:nccl,cpu:gloo"`` keeps CUDA states on CUDA), else the host for
gloo/mpi, else the rank's accelerator (the current device once set, else
LOCAL_RANK's).

A rank that saw no data does not know its states' shapes. When signatures
differ, the ranks exchange their signatures (``all_gather_object``) and either
agree on shapes (empty states become zeros of the right shape, growable states
such as an F1 confusion matrix are padded to the largest) or raise
:class:`DivergenceError` on every rank, saying what differs.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import operator
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.distributed as dist

from .options import is_int, is_number
from .runtime.launch import local_rank

__all__ = [
    "Accumulator",
    "Cat",
    "DivergenceError",
    "Except",
    "List",
    "Max",
    "Mean",
    "Min",
    "Sum",
    "calculate",
]

SUM, MAX = "sum", "max"
_HASH_CHUNKS = 3  # 3 x 20 bits of signature hash; squares stay exact in float64
_INLINE = 4096  # sum-like numbers carried in the first, fixed-length collective (32 KiB: still latency-bound)


class DivergenceError(RuntimeError):
    """Ranks called :func:`calculate` with different accumulators, kinds or shapes."""


# --------------------------------------------------------------------------- #
# Input handling
# --------------------------------------------------------------------------- #


def _as_tensor(value: Any) -> tuple[torch.Tensor, str]:
    """Return ``value`` as a detached tensor and its result kind.

    The kind is ``"int"``/``"float"`` for Python numbers (the result is then a
    Python number too) or the tensor's dtype name.
    """
    if isinstance(value, bool):
        return torch.tensor(float(value), dtype=torch.float64), "int"
    if isinstance(value, int):
        return torch.tensor(value, dtype=torch.float64), "int"
    if isinstance(value, float):
        return torch.tensor(value, dtype=torch.float64), "float"
    tensor = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    return tensor, str(tensor.dtype).removeprefix("torch.")


def _dtype(kind: str) -> torch.dtype:
    return getattr(torch, kind)


def _state_device(device: torch.device) -> torch.device:
    # MPS has no float64; keep such states on the host.
    return torch.device("cpu") if device.type == "mps" else device


def _f64(tensor: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """``tensor`` as float64 on the state's device; no copy when it is there already.

    The device move comes first: MPS has no float64, so converting there would fail.
    """
    if tensor.device != state.device:
        tensor = tensor.to(state.device)
    return tensor.to(torch.float64)


def _to_result_device(result: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A float64 result on the inputs' device; on the host for MPS, which has no float64."""
    return result if device.type == "mps" else result.to(device)


NAN_STRATEGIES = ("disable", "error", "warn", "ignore")


def _check_nan_strategy(owner: str, nan_strategy: str) -> str:
    if nan_strategy not in NAN_STRATEGIES:
        raise ValueError(
            f"{owner}: nan_strategy must be one of {', '.join(map(repr, NAN_STRATEGIES))}, got {nan_strategy!r}"
        )
    return nan_strategy


def _report_nans(owner: str, nan_strategy: str, count: torch.Tensor) -> None:
    """Raise or warn about NaN inputs counted over all ranks (so every rank does the same)."""
    if nan_strategy not in ("error", "warn"):
        return
    n = int(count.sum())
    if not n:
        return
    if nan_strategy == "error":
        raise ValueError(
            f"{owner}: {n} NaN input value(s) on some rank (nan_strategy='error'); "
            "remove them, or pass nan_strategy='ignore' to leave them out or 'disable' to let them propagate"
        )
    warnings.warn(f"{owner}: left out {n} NaN input value(s) (nan_strategy='warn')", RuntimeWarning, stacklevel=4)


def _nan_warning(name: str) -> None:
    warnings.warn(f"{name}: nothing was accumulated on any rank; the result is NaN", RuntimeWarning, stacklevel=3)


# --------------------------------------------------------------------------- #
# Base classes
# --------------------------------------------------------------------------- #


_UNSET: Any = object()


@dataclass
class _Contribution:
    """What one accumulator puts into the collectives."""

    sums: list[torch.Tensor] = field(default_factory=list)
    maxes: list[torch.Tensor] = field(default_factory=list)
    blob: bytes | None = None  # only List/Cat-like accumulators gather bytes
    batch_key: Any = field(default_factory=lambda: _UNSET, compare=False)  # see _batch_key


class Accumulator:
    """Base class of accumulators and metrics.

    Subclasses implement :meth:`update`, :meth:`value`, :meth:`reset`,
    :meth:`state_dict`, :meth:`load_state_dict` and the three private hooks
    :func:`calculate` uses: ``_spec`` (a signature, ``None`` entries where a
    shape is still unknown), ``_contribute`` (states laid out as an agreed
    signature says) and ``_finish`` (the global value from reduced states).
    """

    _growable: ClassVar[bool] = False  # may states of different shapes be padded to the largest?

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Accumulate locally and return the local running value."""
        self.update(*args, **kwargs)
        return self.value()

    def update(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    def value(self) -> Any:
        """The local value so far (this rank only, no collective)."""
        raise NotImplementedError

    def calculate(self, group: dist.ProcessGroup | None = None) -> Any:
        """The global value over all ranks. A collective: every rank must call it."""
        return calculate([self], group=group)[0]

    def reset(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        raise NotImplementedError

    @property
    def _name(self) -> str:
        return type(self).__name__

    def _spec(self) -> tuple:
        raise NotImplementedError

    def _members(self) -> Mapping[str, Accumulator] | None:
        """The accumulators a collection is made of (reduced in the same call), or None."""
        return None

    def _assemble(self, values: dict[str, Any]) -> Any:
        """A collection's result from its members' results."""
        return values

    def _tensor_device(self) -> torch.device | None:
        """The device of this accumulator's tensor states, None while it holds none."""
        return None

    def _local(self, spec: tuple) -> Any:
        """The global value on one process: the local states, finished like reduced ones."""
        c = self._contribute(spec)
        return self._finish(spec, list(c.sums), list(c.maxes), None if c.blob is None else [c.blob])

    def _contribute(self, spec: tuple) -> _Contribution:
        raise NotImplementedError

    def _finish(self, spec: tuple, sums: list[torch.Tensor], maxes: list[torch.Tensor], blobs: list[bytes] | None) -> Any:
        raise NotImplementedError


class TensorAccumulator(Accumulator):
    """An accumulator whose states are float64 tensors reduced by sum or max.

    Subclasses declare ``_reductions`` (state name -> ``"sum"`` or ``"max"``),
    fill states in :meth:`update` through :meth:`_states_for`, and turn states
    into a value in :meth:`_compute` (float64 tensor in, float64 tensor out).
    """

    _reductions: ClassVar[dict[str, str]]
    _scalar_states: ClassVar[frozenset[str]] = frozenset()  # shape () whatever the value's shape

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated (and the shape, until the next value)."""
        self._states: dict[str, torch.Tensor] | None = None
        self._kind: str | None = None
        self._device = torch.device("cpu")

    # -- local accumulation ------------------------------------------------ #

    def _states_for(self, shape: torch.Size, kind: str, device: torch.device) -> dict[str, torch.Tensor]:
        """The states, created for ``shape`` on first use; a shape change is an error."""
        if self._states is None:
            self._device = device
            self._kind = kind
            self._states = self._neutral(self._shapes_for(tuple(shape)), _state_device(device))
            return self._states
        known = self._value_shape()
        if known is not None and tuple(shape) != known:
            raise ValueError(
                f"{self._name}: got a value of shape {tuple(shape)} after values of shape {known}; "
                "accumulate one shape per accumulator, or call reset() first"
            )
        if self._kind != kind and not {self._kind, kind} <= {"int", "float"}:
            raise ValueError(
                f"{self._name}: got a value of type {kind} after values of type {self._kind}; "
                "feed one type per accumulator (all tensors or all Python numbers)"
            )
        if kind == "float":  # ints then floats: the result is a float
            self._kind = kind
        return self._states

    def _shapes_for(self, value_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        return {name: () if name in self._scalar_states else value_shape for name in self._reductions}

    def _value_shape(self) -> tuple[int, ...] | None:
        if self._states is None:
            return None
        for name, state in self._states.items():
            if name not in self._scalar_states:
                return tuple(state.shape)
        return ()

    def _neutral(self, shapes: Mapping[str, tuple[int, ...]], device: torch.device) -> dict[str, torch.Tensor]:
        # Created on the device directly: a fill kernel, no host-to-device copy.
        fill = {SUM: 0.0, MAX: float("-inf")}
        return {
            name: torch.full(shapes[name], fill[self._reductions[name]], dtype=torch.float64, device=device)
            for name in self._reductions
        }

    def value(self) -> Any:
        if self._states is None:
            return self._empty_value()
        return self._convert(self._compute(self._states), self._kind, self._device)

    def _empty_value(self) -> Any:
        _nan_warning(self._name)
        return float("nan")

    def _compute(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _check_states(self, states: Mapping[str, torch.Tensor]) -> None:
        """Raise on invalid global states; called with the reduced states, so on every rank alike."""

    def _empty_mask(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Where nothing was accumulated (the result is NaN there), if that can happen."""
        return None

    def _convert(self, result: torch.Tensor, kind: str, device: torch.device) -> Any:
        """Give the result the type of the inputs: a Python number or a tensor on the input's device.

        Pure conversion: no check that would sync a device on every call.
        """
        if kind == "float":
            return result.item()
        if kind == "int":
            return int(result.item())
        return _to_result_device(result, device)

    # -- the calculate() protocol ------------------------------------------ #

    def _tensor_device(self) -> torch.device | None:
        return None if self._states is None else self._device  # where the inputs live (states: see _state_device)

    def _spec(self) -> tuple:
        # Cached while the states dict and the kind stay the same: shapes of a non-growable
        # accumulator never change under one dict (a shape change is an error), and this
        # Python work per accumulator is what calculate() of many scalars spends its time on.
        cached = getattr(self, "_spec_cache", None)
        if cached is not None and cached[0] is self._states and cached[1] == self._kind and not self._growable:
            return cached[2]
        shapes = None if self._states is None else tuple((n, tuple(s.shape)) for n, s in self._states.items())
        spec = (self._name, self._kind, shapes)
        self._spec_cache = (self._states, self._kind, spec, None)
        return spec

    def _contribute(self, spec: tuple) -> _Contribution:
        cached = getattr(self, "_spec_cache", None)
        if cached is not None and cached[2] is spec and cached[0] is self._states and self._states is not None:
            if cached[3] is None:  # the states as they are, split by reduction once
                contribution = _Contribution()
                for name, reduction in self._reductions.items():
                    (contribution.sums if reduction == SUM else contribution.maxes).append(self._states[name])
                self._spec_cache = cached = (*cached[:3], contribution)
            return cached[3]
        _, kind, shapes = spec
        states = self._states
        if shapes is not None:
            target = dict(shapes)
            if states is None:
                states = self._neutral(target, _state_device(self._device))
            elif any(tuple(s.shape) != target[n] for n, s in states.items()):
                states = self._padded(states, target)
        contribution = _Contribution()
        for name in self._reductions if states is not None else ():
            (contribution.sums if self._reductions[name] == SUM else contribution.maxes).append(states[name])
        return contribution

    def _padded(self, states: Mapping[str, torch.Tensor], target: Mapping[str, tuple]) -> dict[str, torch.Tensor]:
        padded = self._neutral(target, _state_device(self._device))
        for name, state in states.items():
            padded[name][tuple(slice(0, n) for n in state.shape)] = state
        return padded

    def _finish(self, spec: tuple, sums: list[torch.Tensor], maxes: list[torch.Tensor], blobs: list[bytes] | None) -> Any:
        if not sums and not maxes:
            return self._empty_value()
        it_sum, it_max = iter(sums), iter(maxes)
        states = {n: next(it_sum) if r == SUM else next(it_max) for n, r in self._reductions.items()}
        self._check_states(states)
        result = self._compute(states)
        # The type all ranks agreed on (Python ints here and floats there give floats everywhere);
        # a rank that saw nothing returns on the device the reduction ran on.
        kind, device = spec[1], (self._device if self._states is not None else result.device)
        empty = self._empty_mask(states)
        if empty is not None and bool(empty.any()):
            _nan_warning(self._name)
            if kind == "int":
                return result.item()
            if kind != "float" and not _dtype(kind).is_floating_point:
                return _to_result_device(result, device)  # NaN has no integer form: float64
        return self._convert_global(result, kind, device)

    def _convert_global(self, result: torch.Tensor, kind: str, device: torch.device) -> Any:
        return self._convert(result, kind, device)

    # -- state dicts ------------------------------------------------------- #

    def state_dict(self) -> dict[str, Any]:
        """The local state, to be restored exactly by :meth:`load_state_dict`."""
        states = None if self._states is None else {n: s.clone() for n, s in self._states.items()}
        return {"states": states, "kind": self._kind, "device": str(self._device)}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        states = state_dict["states"]
        missing = None if states is None else set(self._reductions) - set(states)
        if missing:
            raise KeyError(f"{self._name}.load_state_dict: missing states {sorted(missing)}")
        self._states = None if states is None else {n: states[n].clone() for n in self._reductions}
        self._kind = state_dict["kind"]
        self._device = torch.device(state_dict["device"])


# --------------------------------------------------------------------------- #
# Sum, Mean, Max, Min
# --------------------------------------------------------------------------- #


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
        self.nan_strategy = _check_nan_strategy(type(self).__name__, nan_strategy)
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
            _report_nans(self._name, self.nan_strategy, states["nans"])

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "nan_strategy": self.nan_strategy}


def _is_number(value: Any) -> bool:
    return is_number(value)


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
        if _is_number(value) and self._states is not None and not self._value_shape():
            # A Python number into existing scalar state: host arithmetic, no tensor made or copied.
            states = self._states_for((), "float" if isinstance(value, float) else "int", self._device)
            if isinstance(value, float) and math.isnan(value) and "nans" in states:
                states["nans"] += 1
                if self._drops_nans:
                    return
            states["total"] += value
            return
        tensor, kind = _as_tensor(value)
        states = self._states_for(tensor.shape, kind, tensor.device)
        x = _f64(tensor, states["total"])
        nan = self._nan_mask(x, states, rows=False) if x.is_floating_point() and tensor.is_floating_point() else None
        if nan is not None and self._drops_nans:
            x = x.masked_fill(nan, 0.0)
        states["total"] += x

    def extend(self, values: Any) -> None:
        """Add every row of ``values`` (dim 0) as one value each."""
        tensor, kind = _as_tensor(values)
        states = self._states_for(tensor.shape[1:], kind, tensor.device)
        x = _f64(tensor, states["total"])
        nan = self._nan_mask(x, states, rows=True) if tensor.is_floating_point() else None
        if nan is not None and self._drops_nans:
            x = x.masked_fill(nan, 0.0)
        states["total"] += x.sum(0)

    def _compute(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return states["total"]

    @classmethod
    def _batch_values(cls, accs: Sequence[Sum], specs: Sequence[tuple], block: torch.Tensor) -> list[Any] | None:
        """Python-number sums of many accumulators at once (rows of ``block``: their states); None: one by one."""
        if block.shape[1] > 1 and bool(block[:, 1].any()):  # NaN counts to report: the careful path
            return None
        values = block[:, 0].tolist()
        return [int(v) if spec[1] == "int" else v for v, spec in zip(values, specs)]

    def _convert(self, result: torch.Tensor, kind: str, device: torch.device) -> Any:
        if kind not in ("int", "float") and not _dtype(kind).is_floating_point:
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
            or ``"ignore"`` (a NaN value is left out with its weight).
    """

    _reductions = {"total": SUM, "weight": SUM, "nans": SUM}

    def update(self, value: Any, weight: Any = 1) -> None:
        """Add one value with a weight (a number, or a tensor broadcastable to the value).

        A weight of 0 adds nothing, whatever the value: an empty batch's NaN loss
        with ``weight=0`` leaves the mean as it was (and is not counted as a NaN).
        A Python 0 skips the update on the host; a tensor weight is masked
        elementwise on the device (no host sync).
        """
        if _is_number(weight) and weight == 0:
            if isinstance(value, torch.Tensor):  # shape and type still checked (metadata only)
                kind = str(value.dtype).removeprefix("torch.")
                self._states_for(value.shape, kind, value.device)
            elif not (_is_number(value) and self._states is not None and not self._value_shape()):
                tensor, _ = _as_tensor(value)
                self._states_for(tensor.shape, "float", tensor.device)
            return
        if _is_number(value) and _is_number(weight) and self._states is not None and not self._value_shape():
            states = self._states_for((), "float", self._device)
            if math.isnan(value) and "nans" in states:
                states["nans"] += 1
                if self._drops_nans:
                    return
            states["total"] += value * weight
            states["weight"] += weight
            return
        tensor, kind = _as_tensor(value)
        states = self._states_for(tensor.shape, "float" if kind in ("int", "float") else kind, tensor.device)
        x = _f64(tensor, states["total"])
        if _is_number(weight):  # host number: an argument of the kernels, never a tensor on the device
            nan = self._nan_mask(x, states, rows=False)
            w = float(weight)
            if nan is not None and self._drops_nans:
                states["total"].add_(x.masked_fill(nan, 0.0), alpha=w)
                states["weight"].add_((~nan).to(torch.float64), alpha=w)
            else:
                states["total"].add_(x, alpha=w)
                states["weight"] += w
            return
        w = _f64(_as_tensor(weight)[0], states["weight"])
        self._add_weighted(states, x, w, rows=False)

    def extend(self, values: Any, weights: Any = None) -> None:
        """Add every row of ``values`` (dim 0) as one value, optionally weighted per row.

        Rows of weight 0 add nothing, whatever their values (see :meth:`update`).
        """
        tensor, kind = _as_tensor(values)
        states = self._states_for(tensor.shape[1:], "float" if kind in ("int", "float") else kind, tensor.device)
        rows = _f64(tensor, states["total"])
        if weights is None:
            nan = self._nan_mask(rows, states, rows=True)
            if nan is not None and self._drops_nans:
                states["total"] += rows.masked_fill(nan, 0.0).sum(0)
                states["weight"] += (~nan).sum(0)
            else:
                states["total"] += rows.sum(0)
                states["weight"] += rows.shape[0]
            return
        w = _f64(_as_tensor(weights)[0], states["weight"])
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
            nan = x.isnan()  # (masked values are 0 now)
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
        if (block.shape[1] > 2 and bool(block[:, 2].any())) or bool((block[:, 1] == 0).any()):
            return None  # NaN counts to report or an empty mean to warn about: the careful path
        return (block[:, 0] / block[:, 1]).tolist()

    def _empty_mask(self, states: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return states["weight"] == 0

    def _convert(self, result: torch.Tensor, kind: str, device: torch.device) -> Any:
        return result.item() if kind == "float" else _to_result_device(result, device)


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
        tensor, kind = _as_tensor(value)
        states = self._states_for(tensor.shape, kind, tensor.device)
        x = _f64(tensor, states["extreme"])
        if tensor.is_floating_point():
            self._nan_mask(x, states, rows=False)
        torch.fmax(states["extreme"], x if self._sign > 0 else -x, out=states["extreme"])
        states["count"] += 1

    def extend(self, values: Any) -> None:
        """Take every row of ``values`` (dim 0) into the running extreme."""
        tensor, kind = _as_tensor(values)
        states = self._states_for(tensor.shape[1:], kind, tensor.device)
        if tensor.shape[0]:
            rows = _f64(tensor, states["extreme"])
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
        return result.to(device=device, dtype=_dtype(kind))


class Min(Max):
    """Elementwise minimum of everything accumulated on all ranks (reduced as max of -x)."""

    _sign = -1.0


# --------------------------------------------------------------------------- #
# List and Cat: gathered, in step-major order
# --------------------------------------------------------------------------- #


def _step_major(per_rank: Sequence[Sequence[Any]]) -> list[Any]:
    """Step 0 of rank 0, step 0 of rank 1, ..., then step 1: dataset order for sharded loaders."""
    out = []
    for step in range(max((len(items) for items in per_rank), default=0)):
        out.extend(items[step] for items in per_rank if step < len(items))
    return out


class List(Accumulator):
    """Every accumulated item (any picklable object), from all ranks, in step-major order."""

    def __init__(self) -> None:
        self.reset()

    def update(self, item: Any) -> None:
        """Append one item (a tensor is detached)."""
        self._items.append(item.detach() if isinstance(item, torch.Tensor) else item)

    def value(self) -> list[Any]:
        return list(self._items)

    def reset(self) -> None:
        self._items: list[Any] = []

    def state_dict(self) -> dict[str, Any]:
        return {"items": list(self._items)}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self._items = list(state_dict["items"])

    def _device_type(self) -> str:
        for item in self._items:
            if isinstance(item, torch.Tensor):
                return item.device.type
        return "cpu"  # no tensor here: the ranks that have some decide (see _reconcile)

    def _tensor_device(self) -> torch.device | None:
        return next((item.device for item in self._items if isinstance(item, torch.Tensor)), None)

    def _spec(self) -> tuple:
        return (self._name, self._device_type())

    def _local(self, spec: tuple) -> Any:
        return list(self._items)  # one process: no serialisation round trip

    def _contribute(self, spec: tuple) -> _Contribution:
        buffer = io.BytesIO()
        torch.save(self._items, buffer)  # pickles anything; tensors without copies through numpy
        return _Contribution(blob=buffer.getvalue())

    def _result_device(self, spec: tuple) -> torch.device:
        """Where gathered tensors go: the device type the ranks agreed on, this rank's device of that type."""
        kind = spec[1]
        local = self._tensor_device()
        if local is not None and local.type == kind:
            return local
        if kind == "cpu":
            return torch.device("cpu")
        count = torch.accelerator.device_count() if torch.accelerator.is_available() else 0
        current = torch.accelerator.current_device_index() if count else 0
        return torch.device(kind, _local_device_index(count, current))

    def _finish(self, spec: tuple, sums: list[torch.Tensor], maxes: list[torch.Tensor], blobs: list[bytes] | None) -> Any:
        device = self._result_device(spec)
        per_rank = [torch.load(io.BytesIO(blob), map_location=device, weights_only=False) for blob in blobs or ()]
        return _step_major(per_rank)


class Cat(Accumulator):
    """Tensors concatenated along dim 0 from all ranks, chunk by chunk in step-major order.

    Each call adds one chunk (a batch); ranks may hold different numbers of
    chunks and rows. The result is on the input's device. The chunks are kept
    and gathered by a :class:`List`; Cat checks and concatenates them.
    """

    def __init__(self) -> None:
        self._chunks = List()

    def update(self, chunk: torch.Tensor) -> None:
        """Append one chunk; its trailing shape and dtype must match earlier chunks."""
        chunk = torch.as_tensor(chunk).detach()
        if chunk.dim() == 0:
            raise ValueError(f"{self._name}: got a 0-d tensor; Cat concatenates along dim 0, pass shape (n, ...)")
        if self._chunks._items:
            first = self._chunks._items[0]
            if chunk.shape[1:] != first.shape[1:] or chunk.dtype != first.dtype:
                raise ValueError(
                    f"{self._name}: got a chunk of shape {tuple(chunk.shape)} and {chunk.dtype} after "
                    f"(n, {', '.join(map(str, first.shape[1:]))}) and {first.dtype}; chunks may differ in dim 0 only"
                )
        self._chunks.update(chunk)

    def value(self) -> torch.Tensor:
        chunks = self._chunks.value()
        return torch.cat(chunks) if chunks else torch.empty(0)

    def reset(self) -> None:
        self._chunks.reset()

    def state_dict(self) -> dict[str, Any]:
        return self._chunks.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self._chunks.load_state_dict(state_dict)

    def _tensor_device(self) -> torch.device | None:
        return self._chunks._tensor_device()

    def _spec(self) -> tuple:
        return (self._name, self._chunks._device_type())

    def _local(self, spec: tuple) -> torch.Tensor:
        return self.value()

    def _contribute(self, spec: tuple) -> _Contribution:
        return self._chunks._contribute(spec)

    def _finish(self, spec: tuple, sums: list[torch.Tensor], maxes: list[torch.Tensor], blobs: list[bytes] | None) -> Any:
        chunks = self._chunks._finish(spec, sums, maxes, blobs)
        if not chunks:
            return torch.empty(0, device=self._chunks._result_device(spec))
        layouts = {(tuple(c.shape[1:]), c.dtype) for c in chunks}
        if len(layouts) > 1:
            raise DivergenceError(f"{self._name}: ranks accumulated chunks of different trailing shapes/dtypes: {sorted(map(str, layouts))}")
        return torch.cat(chunks)


# --------------------------------------------------------------------------- #
# Except
# --------------------------------------------------------------------------- #


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

    def _contribute(self, spec: tuple) -> _Contribution:
        return self.accumulator._contribute(spec)

    def _finish(self, spec: tuple, sums: list[torch.Tensor], maxes: list[torch.Tensor], blobs: list[bytes] | None) -> Any:
        return self.accumulator._finish(spec, sums, maxes, blobs)

    @property
    def _growable(self) -> bool:  # type: ignore[override]
        return self.accumulator._growable


# --------------------------------------------------------------------------- #
# calculate(): the coalesced collective
# --------------------------------------------------------------------------- #


_CPU_BACKENDS = ("gloo", "mpi", "ucc")
_DEVICE_BACKENDS = {"nccl": "cuda", "xccl": "xpu", "hccl": "npu"}


def _backend_devices(backend: str, accelerator: str | None) -> set[str]:
    """Device types a backend string can reduce on.

    ``"gloo"`` -> cpu, ``"nccl"`` -> cuda, ``"cuda:nccl,cpu:gloo"`` (what
    Accelerate starts for FSDP with CPU offload) -> both. A group started
    without naming a backend reports ``"undefined"``: it reduces on the
    accelerator when there is one, else on the host.
    """
    backend = backend.lower()
    if ":" in backend:
        return {pair.split(":", 1)[0].strip() for pair in backend.split(",") if ":" in pair}
    if backend in _CPU_BACKENDS:
        return {"cpu", accelerator} - {None} if backend == "ucc" else {"cpu"}
    if backend in _DEVICE_BACKENDS:
        return {_DEVICE_BACKENDS[backend]}
    return {accelerator} if accelerator else {"cpu"}


def _local_device_index(device_count: int, current: int) -> int:
    """This rank's accelerator: the current device once set, else LOCAL_RANK's.

    Under plain torchrun without ``set_device`` every rank's current device
    is 0; NCCL then needs LOCAL_RANK to find the rank's own device.
    """
    local = local_rank()
    if current == 0 and local is not None and device_count > 0:
        return local % device_count
    return current


def _choose_device(
    backend: str, states: torch.device | None, accelerator: str | None, device_count: int = 0, current: int = 0
) -> torch.device:
    """Where ``calculate()`` reduces: the states' device when the backend reduces there, else one it can.

    Args:
        backend: ``dist.get_backend(group)``, e.g. ``"gloo"`` or ``"cuda:nccl,cpu:gloo"``.
        states: the device of the accumulators' tensor states, None if none.
        accelerator: the accelerator type (``"cuda"``) or None.
        device_count, current: the accelerator's device count and current index.
    """
    supported = _backend_devices(backend, accelerator)
    if states is not None and states.type in supported:
        if states.type == "cpu" or states.index is not None:
            return states
        return torch.device(states.type, _local_device_index(device_count, current))
    if "cpu" in supported:
        return torch.device("cpu")
    kind = accelerator if accelerator in supported else next(iter(sorted(supported)))
    return torch.device(kind, _local_device_index(device_count, current))


def _comm_device(group: dist.ProcessGroup | None, accs: Sequence[Accumulator] = ()) -> torch.device:
    """The device the group's backend reduces this call's tensors (those of ``accs``) on."""
    accelerator = torch.accelerator.current_accelerator()
    if accelerator is None:  # the host whatever the states: no need to look at them
        return _choose_device(str(dist.get_backend(group)), None, None)
    states = _states_device(accs)
    return _choose_device(
        str(dist.get_backend(group)), states, accelerator.type,
        torch.accelerator.device_count(), torch.accelerator.current_device_index(),
    )


def _states_device(accs: Sequence[Accumulator]) -> torch.device | None:
    """The device of the first accumulator holding tensor states off the host, else the host (None: none)."""
    found = None
    for acc in accs:
        device = acc._tensor_device()
        if device is not None:
            if device.type != "cpu":
                return device
            found = device
    return found


def _signature(specs: Any) -> list[float]:
    try:
        return _cached_signature(specs)
    except TypeError:  # an unhashable spec: compute it afresh
        return _signature_of(specs)


@functools.lru_cache(maxsize=256)
def _cached_signature(specs: Any) -> list[float]:
    return _signature_of(specs)


def _signature_of(specs: Any) -> list[float]:
    digest = int.from_bytes(hashlib.blake2b(repr(specs).encode(), digest_size=8).digest(), "big")
    chunks = [float((digest >> (20 * k)) & 0xFFFFF) for k in range(_HASH_CHUNKS)]
    # Summed over ranks, sum(s) == n*s and sum(s*s) == n*s*s on a rank iff all ranks
    # have the same s (zero variance), so every rank detects any difference.
    return [v for s in chunks for v in (s, s * s)]


def _signature_agrees(reduced: torch.Tensor, mine: list[float], world: int) -> bool:
    return all(reduced[i].item() == world * mine[i] for i in range(len(mine)))


def _reconcile(all_specs: list[list[tuple]], accs: Sequence[Accumulator]) -> list[tuple]:
    """Agree on one spec per accumulator from every rank's specs, or raise DivergenceError."""
    counts = [len(specs) for specs in all_specs]
    if len(set(counts)) > 1:
        described = "; ".join(f"rank {r}: {[spec[0] for spec in specs]}" for r, specs in enumerate(all_specs))
        raise DivergenceError(f"calculate(): ranks passed different numbers of accumulators ({described})")
    agreed = []
    for i, acc in enumerate(accs):
        column = [specs[i] for specs in all_specs]
        described = "; ".join(f"rank {r}: {spec}" for r, spec in enumerate(column))
        if len({spec[0] for spec in column}) > 1:
            raise DivergenceError(f"calculate(): accumulator {i} differs in kind across ranks ({described})")
        if len(column[0]) == 2:  # List/Cat: agree on the device type results come back on
            types = {spec[1] for spec in column} - {"cpu"}
            agreed.append((column[0][0], types.pop() if len(types) == 1 else "cpu"))
            continue
        kinds = {spec[1] for spec in column if spec[1] is not None}
        if kinds == {"int", "float"}:  # Python ints on some ranks, floats on others
            kinds = {"float"}
        if len(kinds) > 1:
            raise DivergenceError(f"calculate(): accumulator {i} ({column[0][0]}) got different value types across ranks ({described})")
        shapes = {spec[2] for spec in column if spec[2] is not None}
        if len(shapes) > 1 and not acc._growable:
            raise DivergenceError(f"calculate(): accumulator {i} ({column[0][0]}) has different shapes across ranks ({described})")
        if len(shapes) > 1:  # growable: pad every state to the largest extent per dim
            names = [name for name, _ in next(iter(shapes))]
            shapes = {
                tuple((n, tuple(max(dims) for dims in zip(*(dict(s)[n] for s in shapes)))) for n in names)
            }
        agreed.append((column[0][0], next(iter(kinds), None), next(iter(shapes), None)))
    return agreed


_LEAF = Accumulator._members  # the base class's: an accumulator that is no collection


def _expand(acc: Any, path: str, flat: list[Accumulator], names: list[str]) -> Any:
    """Put ``acc`` (or a collection's members, recursively) into ``flat``; return how to rebuild its result."""
    if not isinstance(acc, Accumulator):
        raise TypeError(f"calculate(): expected accumulators, got {type(acc).__name__} at {path or 'the top'}")
    members = acc._members()
    if members is None:
        flat.append(acc)
        names.append(path)
        return len(flat) - 1
    return acc, {key: _expand(member, f"{path}.{key}", flat, names) for key, member in members.items()}


def _assembled(node: Any, values: list[Any]) -> Any:
    if isinstance(node, int):
        return values[node]
    acc, children = node
    return acc._assemble({key: _assembled(child, values) for key, child in children.items()})


def _flatten(
    accumulators: Sequence[Accumulator] | Mapping[str, Accumulator],
) -> tuple[list[Accumulator], Any, list[str] | None]:
    """The accumulators (collections expanded), a function that rebuilds the caller's structure, and names.

    The names (dict keys and collection member keys) are part of the signature
    the ranks compare, so dicts or collections keyed differently never mix values.
    """
    if isinstance(accumulators, Accumulator):
        raise TypeError("calculate() takes a list or dict of accumulators; for one, call acc.calculate()")
    keyed = isinstance(accumulators, Mapping)
    if not keyed and all(getattr(type(acc), "_members", None) is _LEAF for acc in accumulators):
        return list(accumulators), list, None  # a plain list of plain accumulators: nothing to expand
    items = list(accumulators.items()) if keyed else [(str(i), a) for i, a in enumerate(accumulators)]
    flat: list[Accumulator] = []
    names: list[str] = []
    nodes = [_expand(acc, key, flat, names) for key, acc in items]
    if keyed:
        keys = [key for key, _ in items]
        return flat, lambda values: dict(zip(keys, (_assembled(n, values) for n in nodes))), names
    if all(isinstance(node, int) for node in nodes):
        return flat, list, None
    return flat, lambda values: [_assembled(n, values) for n in nodes], names


def calculate(
    accumulators: Sequence[Accumulator] | Mapping[str, Accumulator],
    group: dist.ProcessGroup | None = None,
) -> Any:
    """Global values of many accumulators and metrics in a few coalesced collectives.

    A collective: every rank in ``group`` must call it with the same kinds of
    accumulators in the same order. Local states are left unchanged.

    Args:
        accumulators: a list or dict of accumulators (metrics included).
        group: the process group; the default group when ``None``. With no
            initialized group (one process) the values are the local ones.

    Returns:
        The global values in the same structure (list or dict), identical on
        every rank.

    Raises:
        DivergenceError: on every rank, when ranks passed different
            accumulators, kinds or shapes.
        RuntimeError: on every rank, when Accelerate was set up with another
            number of processes than the default group holds (e.g. a plain
            ``Accelerator()`` under ``torchrun`` on a machine without a GPU).
    """
    accs, rebuild, keys = _flatten(accumulators)
    distributed = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size(group) if distributed else 1
    specs = [acc._spec() for acc in accs]
    if world == 1:
        return rebuild(_local_results(accs, specs))
    if group is None:
        _check_accelerate_world(world)
    device = _comm_device(group, accs)

    plan = _plan_for(accs, keys, specs, group, world, device)
    if plan is not None:
        results = plan.run(accs, specs, group)
        if results is not None:
            return rebuild(results)
        first = None  # signatures differ (the same first collective as below was made)
    else:
        first, contributions, blob = _first_collective(accs, keys, specs, group, world, device)
    if first is None:  # signatures differ: agree on shapes or raise on every rank
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, (keys, specs), group=group)
        if any(other_keys != keys for other_keys, _ in gathered):
            described = "; ".join(f"rank {r}: {k}" for r, (k, _) in enumerate(gathered))
            raise DivergenceError(f"calculate(): ranks passed dicts with different keys or key order ({described})")
        specs = _reconcile([other_specs for _, other_specs in gathered], accs)
        first, contributions, blob = _first_collective(accs, keys, specs, group, world, device)
        if first is None:
            raise DivergenceError("calculate(): ranks still disagree after exchanging signatures")
    sums, sizes = first

    maxes = [t for c in contributions for t in c.maxes]
    max_flat = _flat(maxes, device)
    if max_flat.numel():
        dist.all_reduce(max_flat, op=dist.ReduceOp.MAX, group=group)

    blobs = None
    if blob is not None:
        blobs = _gather_bytes(blob, sizes, group, device)

    return rebuild(_split_results(accs, specs, contributions, sums, max_flat, blobs))


def _check_accelerate_world(world: int) -> None:
    """Refuse to reduce over ranks that each trained alone: Accelerate's process count is not the group's.

    Plain ``torchrun --nproc_per_node 2`` on a machine without a GPU gives every rank an
    Accelerator of one process, which hands it all the data, while the process group
    has 2: the sums would count every sample twice. Reads Accelerate's state only when
    it was imported and set up (no import, no collective); every rank sees the same.
    """
    state = sys.modules.get("accelerate.state")
    partial = getattr(state, "PartialState", None)
    n = getattr(partial, "_shared_state", {}).get("num_processes")
    if n is not None and n != world:
        raise RuntimeError(
            f"calculate(): Accelerate sees {n} process(es) but the process group holds {world}: each rank went "
            "through all the data alone, so every sample would be counted once per rank. On a machine without a "
            "GPU, build the Accelerator with distlearn.accelerator.build_accelerator() (or Accelerator(cpu=True), "
            "or launch with ACCELERATE_USE_CPU=1)."
        )


class _Plan:
    """How to reduce one call pattern of sum-only, batchable accumulators (the common case).

    Built once per pattern (the same accumulators with the same cached specs,
    keys, group and device) and reused while the pattern repeats, so a call
    costs one stack of the states, one concatenation and one all_reduce of the
    same fixed-length buffer :func:`_first_collective` sends (ranks on this path
    and ranks on the general one stay compatible), then one batched finish per
    run of accumulators of one kind. The results are those of the general path,
    bit for bit: the same sums in the same order, finished by the same code.
    """

    def __init__(self, accs, keys, specs, group, world, device, contributions) -> None:
        self.accs, self.keys, self.specs = tuple(accs), keys, tuple(specs)
        self.group, self.world, self.device = group, world, device
        self.tensors = [t for c in contributions for t in c.sums]
        self.shapes = [[t.shape for t in c.sums] for c in contributions]
        self.signature = list(_signature((None if keys is None else tuple(keys), self.specs)))
        self.expected = [world * v for v in self.signature]
        header = self.signature + [0.0] * world  # no List/Cat: every rank's byte size is 0
        self.header = torch.tensor(header, dtype=torch.float64, device=device)
        self.count = sum(t.numel() for t in self.tensors)
        # One buffer for every call of this pattern: states are stacked straight into it (no
        # allocation, no concatenation). Values handed out never alias it (see run()).
        self.buffer = torch.zeros(len(header) + _INLINE, dtype=torch.float64, device=device)
        self.stackable = all(t.dim() == 0 and t.dtype == torch.float64 and t.device == device for t in self.tensors)
        self.runs: list[tuple[int, int, type | None, int]] = []  # (first, end, class to batch, numbers each)
        i = 0
        while i < len(accs):
            batch = _batch_key(accs[i], specs[i], contributions[i])
            j = i + 1
            while batch is not None and j < len(accs) and _batch_key(accs[j], specs[j], contributions[j]) == batch:
                j += 1
            width = sum(t.numel() for t in contributions[i].sums)
            self.runs.append((i, j, type(accs[i]) if batch is not None else None, width))
            i = j

    def matches(self, accs, keys, specs, group, world, device) -> bool:
        return (
            len(accs) == len(self.accs)
            and group is self.group
            and world == self.world
            and device == self.device
            and keys == self.keys
            and all(map(operator.is_, accs, self.accs))
            and all(map(operator.is_, specs, self.specs))
        )

    def run(self, accs, specs, group) -> list[Any] | None:
        """The global values, or None when the ranks' signatures differ."""
        buffer, start = self.buffer, len(self.header)
        buffer[:start] = self.header
        if self.stackable:
            torch.stack(self.tensors, out=buffer[start : start + self.count])
        else:
            buffer[start : start + self.count] = _flat(self.tensors, self.device)
        buffer[start + self.count :] = 0.0
        dist.all_reduce(buffer, group=group)
        if buffer[: len(self.signature)].tolist() != self.expected:
            return None
        sums = buffer[start : start + self.count]
        if any(cls is None for _, _, cls, _ in self.runs):
            sums = sums.clone()  # finished one by one: values may be views of the sums
        results: list[Any] = []
        offset = 0
        for i, j, cls, width in self.runs:
            if cls is not None:
                block = sums[offset : offset + (j - i) * width].view(j - i, width)
                values = cls._batch_values(accs[i:j], specs[i:j], block)
                if values is not None:  # Python numbers: nothing refers to the buffer
                    results.extend(values)
                    offset += (j - i) * width
                    continue
                sums = sums.clone()  # the careful path below may hand out views
            for k in range(i, j):  # the careful path, one by one
                acc_sums = []
                for shape in self.shapes[k]:
                    n = math.prod(shape)
                    acc_sums.append(sums[offset : offset + n].view(shape))
                    offset += n
                results.append(accs[k]._finish(specs[k], acc_sums, [], None))
        return results


_LAST_PLAN: list[_Plan | None] = [None]  # the last call pattern's plan


def _plan_for(accs, keys, specs, group, world, device) -> _Plan | None:
    """The plan for this call pattern (cached), or None when it needs the general path."""
    plan = _LAST_PLAN[0]
    if plan is not None and plan.matches(accs, keys, specs, group, world, device):
        return plan
    if any(acc._growable for acc in accs):  # specs made afresh each call: nothing to reuse
        return None
    contributions = [acc._contribute(spec) for acc, spec in zip(accs, specs)]
    if any(c.maxes or c.blob is not None or not c.sums for c in contributions):
        return None
    if sum(t.numel() for c in contributions for t in c.sums) > _INLINE:
        return None
    # Only states the accumulators keep (a cached contribution) may be planned on: others
    # (padded or neutral states made for this call) would not be the same next time.
    if any(getattr(acc, "_spec_cache", (None,) * 4)[3] is not c for acc, c in zip(accs, contributions)):
        return None
    plan = _Plan(accs, keys, specs, group, world, device, contributions)
    _LAST_PLAN[0] = plan
    return plan


def _local_results(accs: Sequence[Accumulator], specs: list[tuple]) -> list[Any]:
    return [acc._local(spec) for acc, spec in zip(accs, specs)]


def _flat(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """All states in one float64 vector on ``device``: runs of scalars stacked in one call each."""
    if not tensors:
        return torch.zeros(0, dtype=torch.float64, device=device)
    try:  # the common case, many scalar states on one device: one call, no per-tensor checks
        stacked = torch.stack(tensors)
        if stacked.dim() == 1:
            return stacked.to(device=device, dtype=torch.float64)
    except RuntimeError:
        pass
    home = tensors[0].device
    parts: list[torch.Tensor] = []
    run: list[torch.Tensor] = []
    for t in tensors:
        if t.device != home:  # states on several devices (rare): move each to the first one's
            t = t.to(home)
        if t.dim() == 0:
            run.append(t)
            continue
        if run:
            parts.append(torch.stack(run))
            run = []
        parts.append(t.reshape(-1))
    if run:
        parts.append(torch.stack(run))
    flat = parts[0] if len(parts) == 1 else torch.cat(parts)
    return flat.to(device=device, dtype=torch.float64)


def _first_collective(accs, keys, specs, group, world, device):
    """The fixed-length all_reduce: signature, List/Cat byte sizes, inline sums.

    Returns ``(None, None, None)`` when the ranks' signatures differ; otherwise
    ``((sums, byte_sizes), contributions, this rank's blob)``.
    """
    contributions = [acc._contribute(spec) for acc, spec in zip(accs, specs)]
    segments = [c.blob for c in contributions if c.blob is not None]
    blob = _pack_segments(segments) if segments else None
    signature = list(_signature((None if keys is None else tuple(keys), tuple(specs))))
    sizes = [0.0] * world
    sizes[dist.get_rank(group)] = float(len(blob)) if blob is not None else 0.0
    header = torch.tensor(signature + sizes, dtype=torch.float64)
    sum_flat = _flat([t for c in contributions for t in c.sums], device)
    inline = torch.zeros(_INLINE, dtype=torch.float64, device=device)
    inline[: min(_INLINE, sum_flat.numel())] = sum_flat[:_INLINE]
    buffer = torch.cat([header.to(device), inline])
    dist.all_reduce(buffer, group=group)
    head = buffer[: len(header)].cpu()
    if not _signature_agrees(head, signature, world):
        return None, None, None
    rest = sum_flat[_INLINE:].clone()
    if rest.numel():
        dist.all_reduce(rest, group=group)
    sums = torch.cat([buffer[len(header) :][: min(_INLINE, sum_flat.numel())], rest])
    byte_sizes = [int(v) for v in head[len(signature) :].tolist()]
    return (sums, byte_sizes), contributions, blob


def _pack_segments(segments: list[bytes]) -> bytes:
    lengths = torch.tensor([len(s) for s in segments], dtype=torch.int64).numpy().tobytes()
    return lengths + b"".join(segments)


def _unpack_segments(data: bytes, count: int) -> list[bytes]:
    lengths = torch.frombuffer(bytearray(data[: 8 * count]), dtype=torch.int64).tolist() if count else []
    out, offset = [], 8 * count
    for n in lengths:
        out.append(data[offset : offset + n])
        offset += n
    return out


def _gather_bytes(blob: bytes, sizes: list[int], group, device) -> list[bytes]:
    """One all_gather of every rank's bytes, padded to the largest."""
    longest = max(sizes)
    mine = torch.zeros(longest, dtype=torch.uint8)
    mine[: len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    mine = mine.to(device)
    received = [torch.empty(longest, dtype=torch.uint8, device=device) for _ in sizes]
    dist.all_gather(received, mine, group=group)
    return [bytes(t[:n].cpu().numpy()) for t, n in zip(received, sizes)]


def _split_results(accs, specs, contributions, sums, max_flat, blobs) -> list[Any]:
    # One split per buffer (views, no copies) instead of a slice per state; runs of
    # scalar accumulators of one class are finished together (one tensor op per run).
    max_parts = iter(max_flat.split([t.numel() for c in contributions for t in c.maxes]))
    gather_count = sum(c.blob is not None for c in contributions)
    per_rank = [_unpack_segments(b, gather_count) for b in blobs] if blobs is not None else None
    results: list[Any] = []
    g_idx, offset, i, n = 0, 0, 0, len(accs)
    while i < n:
        acc, c = accs[i], contributions[i]
        batch = _batch_key(acc, specs[i], c)
        if batch is not None:
            j = i + 1
            while j < n and _batch_key(accs[j], specs[j], contributions[j]) == batch:
                j += 1
            width = sum(t.numel() for t in c.sums)
            block = sums[offset : offset + (j - i) * width].view(j - i, width)
            values = type(acc)._batch_values(accs[i:j], specs[i:j], block)
            if values is not None:
                results.extend(values)
                offset += (j - i) * width
                i = j
                continue
        acc_sums = []
        for t in c.sums:
            acc_sums.append(sums[offset : offset + t.numel()].view(t.shape))
            offset += t.numel()
        acc_maxes = [next(max_parts).view(t.shape) for t in c.maxes]
        acc_blobs = None
        if c.blob is not None:
            acc_blobs = [segments[g_idx] for segments in per_rank]
            g_idx += 1
        results.append(acc._finish(specs[i], acc_sums, acc_maxes, acc_blobs))
        i += 1
    return results


def _batch_key(acc: Accumulator, spec: tuple, c: _Contribution) -> Any:
    """What scalar accumulators share to be finished together, or None (finish alone).

    Kept on the contribution, which a TensorAccumulator reuses while its states stay the same.
    """
    if c.batch_key is _UNSET:
        c.batch_key = _new_batch_key(acc, spec, c)
    return c.batch_key


def _new_batch_key(acc: Accumulator, spec: tuple, c: _Contribution) -> Any:
    config = getattr(acc, "_batch_config", None)
    if config is not None:  # metrics whose _compute takes a leading batch dimension
        if c.maxes or c.blob is not None or not c.sums:
            return None
        key = config()
        return None if key is None else (type(acc), spec, key)
    if c.maxes or c.blob is not None or not c.sums or spec[1] not in ("int", "float"):
        return None
    if getattr(type(acc), "_batch_values", None) is None or any(t.dim() for t in c.sums):
        return None
    return type(acc), spec[1], len(c.sums), getattr(acc, "nan_strategy", None)
