"""The accumulator protocol: what calculate() asks of every accumulator, and what one contributes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.distributed as dist


SUM, MAX = "sum", "max"


class DivergenceError(RuntimeError):
    """Ranks called :func:`calculate` with different accumulators, kinds or shapes."""


class PeerLostError(RuntimeError):
    """:func:`calculate` waited for another process that ended or did not call it within the group's timeout."""


UNSET: Any = object()  # a batch key not worked out yet (None is a key: finish alone)


@dataclass
class Contribution:
    """What one accumulator puts into the collectives."""

    sums: list[torch.Tensor] = field(default_factory=list)
    maxes: list[torch.Tensor] = field(default_factory=list)
    blob: bytes | None = None  # only List/Cat-like accumulators gather bytes
    batch_key: Any = field(default_factory=lambda: UNSET, compare=False)  # see split._batch_key


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
        from .collective import calculate  # at call time: the collective is built on this protocol

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

    def _contribute(self, spec: tuple) -> Contribution:
        raise NotImplementedError

    def _finish(self, spec: tuple, sums: list[torch.Tensor], maxes: list[torch.Tensor], blobs: list[bytes] | None) -> Any:
        raise NotImplementedError
