"""What accumulators take in and give back: input tensors, float64 states, result devices, the NaN policy."""

from __future__ import annotations

import warnings
from typing import Any

import torch


def as_tensor(value: Any) -> tuple[torch.Tensor, str]:
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


def torch_dtype(kind: str) -> torch.dtype:
    return getattr(torch, kind)


def state_device(device: torch.device) -> torch.device:
    # MPS has no float64; keep such states on the host.
    return torch.device("cpu") if device.type == "mps" else device


def f64(tensor: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """``tensor`` as float64 on the state's device; no copy when it is there already.

    The device move comes first: MPS has no float64, so converting there would fail.
    """
    if tensor.device != state.device:
        tensor = tensor.to(state.device)
    return tensor.to(torch.float64)


def to_result_device(result: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A float64 result on the inputs' device; on the host for MPS, which has no float64."""
    return result if device.type == "mps" else result.to(device)


NAN_STRATEGIES = ("disable", "error", "warn", "ignore")


def check_nan_strategy(owner: str, nan_strategy: str) -> str:
    if nan_strategy not in NAN_STRATEGIES:
        raise ValueError(
            f"{owner}: nan_strategy must be one of {', '.join(map(repr, NAN_STRATEGIES))}, got {nan_strategy!r}"
        )
    return nan_strategy


def report_nans(owner: str, nan_strategy: str, count: torch.Tensor) -> None:
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


def nan_warning(name: str) -> None:
    warnings.warn(f"{name}: nothing was accumulated on any rank; the result is NaN", RuntimeWarning, stacklevel=3)
