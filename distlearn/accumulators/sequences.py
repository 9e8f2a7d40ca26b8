"""List and Cat: gathered from every rank, in step-major order."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .devices import local_device_index
from .protocol import Accumulator, Contribution, DivergenceError


def step_major(per_rank: Sequence[Sequence[Any]]) -> list[Any]:
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
        return "cpu"  # no tensor here: the ranks that have some decide (see reconcile)

    def _tensor_device(self) -> torch.device | None:
        return next((item.device for item in self._items if isinstance(item, torch.Tensor)), None)

    def _spec(self) -> tuple:
        return (self._name, self._device_type())

    def _local(self, spec: tuple) -> Any:
        return list(self._items)  # one process: no serialisation round trip

    def _contribute(self, spec: tuple) -> Contribution:
        buffer = io.BytesIO()
        torch.save(self._items, buffer)  # pickles anything; tensors without copies through numpy
        return Contribution(blob=buffer.getvalue())

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
        return torch.device(kind, local_device_index(count, current))

    def _finish(self, spec: tuple, sums: list[torch.Tensor], maxes: list[torch.Tensor], blobs: list[bytes] | None) -> Any:
        device = self._result_device(spec)
        per_rank = [torch.load(io.BytesIO(blob), map_location=device, weights_only=False) for blob in blobs or ()]
        return step_major(per_rank)


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

    def _contribute(self, spec: tuple) -> Contribution:
        return self._chunks._contribute(spec)

    def _finish(self, spec: tuple, sums: list[torch.Tensor], maxes: list[torch.Tensor], blobs: list[bytes] | None) -> Any:
        chunks = self._chunks._finish(spec, sums, maxes, blobs)
        if not chunks:
            return torch.empty(0, device=self._chunks._result_device(spec))
        layouts = {(tuple(c.shape[1:]), c.dtype) for c in chunks}
        if len(layouts) > 1:
            raise DivergenceError(f"{self._name}: ranks accumulated chunks of different trailing shapes/dtypes: {sorted(map(str, layouts))}")
        return torch.cat(chunks)
