"""TensorAccumulator: float64 tensor states reduced by sum or max, finished by one computation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from .protocol import MAX, SUM, Accumulator, Contribution
from .values import nan_warning, state_device, to_result_device, torch_dtype


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
            self._states = self._neutral(self._shapes_for(tuple(shape)), state_device(device))
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
        nan_warning(self._name)
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
        return to_result_device(result, device)

    # -- the calculate() protocol ------------------------------------------ #

    def _tensor_device(self) -> torch.device | None:
        return None if self._states is None else self._device  # where the inputs live (states: see state_device)

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

    def _contribute(self, spec: tuple) -> Contribution:
        cached = getattr(self, "_spec_cache", None)
        if cached is not None and cached[2] is spec and cached[0] is self._states and self._states is not None:
            if cached[3] is None:  # the states as they are, split by reduction once
                contribution = Contribution()
                for name, reduction in self._reductions.items():
                    (contribution.sums if reduction == SUM else contribution.maxes).append(self._states[name])
                self._spec_cache = cached = (*cached[:3], contribution)
            return cached[3]
        _, kind, shapes = spec
        states = self._states
        if shapes is not None:
            target = dict(shapes)
            if states is None:
                states = self._neutral(target, state_device(self._device))
            elif any(tuple(s.shape) != target[n] for n, s in states.items()):
                states = self._padded(states, target)
        contribution = Contribution()
        for name in self._reductions if states is not None else ():
            (contribution.sums if self._reductions[name] == SUM else contribution.maxes).append(states[name])
        return contribution

    def _keep_sums_in(self, segment: torch.Tensor) -> None:
        """Keep the sum states as views of ``segment`` (1-d, their sizes in order), values unchanged.

        calculate()'s plan lays the sum states of many accumulators out in one tensor, so a
        call reads them with one copy instead of one op per state. Updates stay in place
        and the states dict, the spec and the cached contribution stay the same objects,
        so nothing else notices (``state_dict`` clones each view on its own).
        """
        contribution = self._spec_cache[3]
        offset, views = 0, {}
        for name, reduction in self._reductions.items():
            if reduction == SUM:
                state = self._states[name]
                view = segment[offset : offset + state.numel()].view(state.shape)
                view.copy_(state)
                views[name] = view
                offset += state.numel()
        self._states.update(views)
        contribution.sums[:] = list(views.values())

    def _padded(self, states: Mapping[str, torch.Tensor], target: Mapping[str, tuple]) -> dict[str, torch.Tensor]:
        padded = self._neutral(target, state_device(self._device))
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
            nan_warning(self._name)
            if kind == "int":
                return result.item()
            if kind != "float" and not torch_dtype(kind).is_floating_point:
                return to_result_device(result, device)  # NaN has no integer form: float64
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
