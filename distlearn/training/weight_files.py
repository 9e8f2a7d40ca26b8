"""Saved full weights read back a group of tensors at a time, as a :class:`~distlearn.training.full_weights.WeightSource`.

Three forms: one ``.safetensors`` file; HF-style shards with their ``model.safetensors.index.json``; and a
``torch.distributed.checkpoint`` (DCP) model folder, what Accelerate's ``save_state`` writes under FSDP with
sharded state dicts (``<checkpoint>/pytorch_model_fsdp_0/``, keys ``model.<the module's own key>``). A DCP
folder is read without a process group (``no_dist``): its metadata gives every tensor's full shape and dtype,
and each group of tensors is loaded into empty tensors of those shapes, whatever number of ranks wrote it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .full_weights import INDEX_FILE, TensorSpec

__all__ = ["DCP_MODEL_DIR", "DcpWeights", "SafetensorsWeights", "is_dcp_folder", "open_weights"]

DCP_MODEL_DIR = "pytorch_model_fsdp_0"  # accelerate.utils.fsdp_utils.save_fsdp_model: FSDP_MODEL_NAME + "_0"
_DCP_METADATA = ".metadata"
_DCP_PREFIX = "model."  # save_fsdp_model saves {"model": state_dict}; DCP flattens it to "model.<key>"
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
           "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32", "U64": "uint64",
           "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def is_dcp_folder(path: str | Path) -> bool:
    """Whether ``path`` is a DCP checkpoint folder (it holds DCP's ``.metadata``)."""
    return (Path(path) / _DCP_METADATA).is_file()


class SafetensorsWeights:
    """One or more safetensors files (a single file, or the shards an index names)."""

    def __init__(self, files: Sequence[Path]) -> None:
        import torch
        from safetensors import SafetensorError, safe_open

        self.specs: list[TensorSpec] = []
        self._file: dict[str, Path] = {}
        for path in files:
            try:
                with safe_open(str(path), framework="pt") as handle:
                    for key in handle.keys():
                        part = handle.get_slice(key)
                        dtype = getattr(torch, _DTYPES.get(part.get_dtype(), ""), None)
                        if dtype is None:
                            raise ValueError(f"tensor {key!r} has dtype {part.get_dtype()}, which torch cannot hold")
                        self.specs.append(TensorSpec(key, tuple(part.get_shape()), dtype))
                        self._file[key] = Path(path)
            except (SafetensorError, OSError, ValueError) as exc:  # a truncated file, another format
                raise ValueError(f"cannot read the weights in {path}: {exc}") from None

    @classmethod
    def from_index(cls, index: Path) -> "SafetensorsWeights":
        """The shards ``index`` (a ``model.safetensors.index.json``) names, each once, in their order.

        Raises:
            ValueError: The index is unreadable, or names a file that is not there.
        """
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            files = list(dict.fromkeys(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"cannot read the index {index}: {exc!r}; expected transformers' "
                             "{'metadata': ..., 'weight_map': {name: file}}") from None
        missing = [name for name in files if not (index.parent / name).is_file()]
        if missing:
            raise ValueError(f"the index {index} names {len(missing)} file(s) that are not there: "
                             f"{', '.join(missing[:3])}; the shards must lie beside their index")
        return cls([index.parent / name for name in files])

    def tensors(self, names: Sequence[str]) -> Iterator[tuple[str, Any]]:
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self._file[name], []).append(name)
        for path, keys in by_file.items():
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for key in keys:
                    yield key, handle.get_tensor(key)

    def finish(self) -> None:
        """Nothing to gather: files are read by one process."""


class DcpWeights:
    """A DCP model folder, read without a process group.

    Args:
        folder: The folder holding DCP's ``.metadata`` (``<checkpoint>/pytorch_model_fsdp_0``).
    """

    def __init__(self, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        self._folder = Path(folder)
        try:
            metadata = dcp.FileSystemReader(str(self._folder)).read_metadata()
        except Exception as exc:  # noqa: BLE001 - a missing or corrupt .metadata: pickle, OSError
            raise ValueError(f"cannot read the sharded checkpoint {self._folder}: {exc!r}") from None
        tensors = {k: m for k, m in metadata.state_dict_metadata.items() if isinstance(m, TensorStorageMetadata)}
        prefixed = bool(tensors) and all(k.startswith(_DCP_PREFIX) for k in tensors)
        self._key: dict[str, str] = {}  # the module's key -> DCP's
        self.specs = []
        for key, meta in tensors.items():
            name = key[len(_DCP_PREFIX):] if prefixed else key
            self._key[name] = key
            self.specs.append(TensorSpec(name, tuple(meta.size), meta.properties.dtype))

    def tensors(self, names: Sequence[str]) -> Iterator[tuple[str, Any]]:
        import torch
        import torch.distributed.checkpoint as dcp

        shapes = {s.name: s for s in self.specs}
        state = {self._key[n]: torch.empty(shapes[n].shape, dtype=shapes[n].dtype) for n in names}
        try:  # one read of these keys only; DCP assembles each from every rank's shards
            with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
                warnings.filterwarnings("ignore", message=".*single process", category=UserWarning)
                dcp.load(state, storage_reader=dcp.FileSystemReader(str(self._folder)), no_dist=True)
        except Exception as exc:  # noqa: BLE001 - CheckpointException wraps each rank's error
            raise ValueError(f"cannot read the sharded checkpoint {self._folder}: {str(exc).strip()[:300]}") from None
        for name in names:
            yield name, state.pop(self._key[name])

    def finish(self) -> None:
        """Nothing to gather: the folder is read by one process."""


def open_weights(path: str | Path) -> SafetensorsWeights | DcpWeights:
    """The weights at ``path``: a ``.safetensors`` file, an ``*.index.json`` of shards, or a DCP folder.

    Raises:
        ValueError: Anything else, or weights that cannot be read (the file named).
    """
    path = Path(path)
    if path.is_dir() and is_dcp_folder(path):
        return DcpWeights(path)
    if path.is_file() and path.name.endswith(".index.json"):
        return SafetensorsWeights.from_index(path)
    if path.is_file() and path.suffix == ".safetensors":
        return SafetensorsWeights([path])
    raise ValueError(f"{str(path)!r} is not a .safetensors file, a {INDEX_FILE} or a sharded checkpoint folder "
                     f"({DCP_MODEL_DIR}/)")
