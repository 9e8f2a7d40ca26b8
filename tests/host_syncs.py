"""Counting host syncs on the CPU: what would make a training step wait for the GPU.

On a CPU nothing waits, so the tests count the calls that would: Python-level reads of a
tensor (``.item()``, ``.tolist()``, ``float()``, ...) and the operators whose output size
or value must come back to the host (boolean-mask indexing, ``nonzero``, ``masked_select``,
``unique``, ``bincount``). The latter sync inside torch without any Python call, so a
patch of the Tensor methods alone cannot see them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")
SYNCING = frozenset({"aten::nonzero", "aten::masked_select", "aten::_local_scalar_dense", "aten::bincount"})
INDEXING = frozenset({"aten::index", "aten::index_put", "aten::index_put_"})


def _is_mask(index: Any) -> bool:
    return isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)


class HostSyncs(TorchDispatchMode):
    """``with HostSyncs() as syncs: ...`` counts, in ``syncs.n``, what would sync on a GPU.

    A read such as ``.item()`` may be counted twice (the method and its operator): compare
    counts of the same code at two sizes, not against a fixed number.
    """

    def __init__(self) -> None:
        super().__init__()
        self.n = 0
        self._originals: dict[str, Any] = {}

    def __enter__(self) -> HostSyncs:
        for name in READS:
            original = self._originals[name] = getattr(torch.Tensor, name)

            def counting(tensor, *args, _original=original, **kwargs):
                self.n += 1
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, counting)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            for name, original in self._originals.items():
                setattr(torch.Tensor, name, original)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        masked = name in INDEXING and len(args) > 1 and any(_is_mask(i) for i in (args[1] or ()))
        self.n += name in SYNCING or name.startswith(("aten::unique", "aten::_unique")) or masked
        return func(*args, **(kwargs or {}))
