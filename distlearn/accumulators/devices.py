"""Which device calculate() reduces on, and where results of a device type go."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from ..runtime.launch import local_rank
from .protocol import Accumulator


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


def local_device_index(device_count: int, current: int) -> int:
    """This rank's accelerator: the current device once set, else LOCAL_RANK's.

    Under plain torchrun without ``set_device`` every rank's current device
    is 0; NCCL then needs LOCAL_RANK to find the rank's own device.
    """
    local = local_rank()
    if current == 0 and local is not None and device_count > 0:
        return local % device_count
    return current


def choose_device(
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
        return torch.device(states.type, local_device_index(device_count, current))
    if "cpu" in supported:
        return torch.device("cpu")
    kind = accelerator if accelerator in supported else next(iter(sorted(supported)))
    return torch.device(kind, local_device_index(device_count, current))


def comm_device(group: dist.ProcessGroup | None, accs: Sequence[Accumulator] = ()) -> torch.device:
    """The device the group's backend reduces this call's tensors (those of ``accs``) on."""
    accelerator = torch.accelerator.current_accelerator()
    if accelerator is None:  # the host whatever the states: no need to look at them
        return choose_device(str(dist.get_backend(group)), None, None)
    states = _states_device(accs)
    return choose_device(
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
