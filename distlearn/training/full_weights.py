"""Full weights a user loads without distlearn, a tensor at a time: gathered from a model (sharded with FSDP2 or
not) and written as plain safetensors.

    source = model_weights(accelerator, prepared_model)      # every rank; gathers nothing yet
    save_full_weights(folder, source, write=accelerator.is_main_process)   # every rank: the gathers are collectives

Below the size limit the weights are one ``model.safetensors``; above it they are split as transformers'
``save_pretrained(max_shard_size=...)`` splits them: ``model-00001-of-00003.safetensors`` ... and
``model.safetensors.index.json`` (``metadata.total_size``, ``weight_map``), which
``transformers.trainer_utils.load_sharded_checkpoint`` and ``huggingface_hub.load_torch_model`` read. The split
is planned from the tensors' shapes and dtypes before anything is gathered, so the file names are known up front
and the main process holds at most one file's tensors in host memory.

Under FSDP2 (``fully_shard``: DTensor parameters) each tensor is gathered alone with ``DTensor.full_tensor()``
on every rank (one full tensor on each device at a time, never the whole model) and the main process copies it
to host memory. Every rank must gather the same tensors in the same order: a source gathers in the order of its
``specs`` and :meth:`ModelWeights.finish` gathers whatever is left, so a main process that failed while writing
still meets the others in their collectives. Reading saved weights back (files, an index, a DCP folder) is
:mod:`distlearn.training.weight_files`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

__all__ = ["DEFAULT_MAX_SHARD_SIZE", "INDEX_FILE", "SIZE_EXPECTED", "WEIGHTS_FILE", "ModelWeights", "StateDictWeights",
           "TensorSpec", "WeightSource", "as_source", "is_sharded", "is_weights_file", "model_weights", "parse_size",
           "save_full_weights", "shard_plan", "weight_set", "written_by_main"]

T = TypeVar("T")
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_SHARD_FILE = "model-{:05d}-of-{:05d}.safetensors"
_WEIGHT_NAME = re.compile(r"^model(?:-\d{5}-of-\d{5})?\.safetensors(?:\.index\.json)?$")
_SHARD_NAME = re.compile(r"^model-\d{5}-of-(\d{5})\.safetensors$")
# huggingface_hub's split default (MAX_SHARD_SIZE "5GB", decimal) and transformers 4.x's save_pretrained default:
# the shard size of most models on the Hub (transformers 5 raised its own default to 50GB).
DEFAULT_MAX_SHARD_SIZE = 5 * 10**9
_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
SIZE_EXPECTED = "a size in bytes > 0: an int or a string such as 5GB, 500MB or 2GiB"


def is_weights_file(name: str) -> bool:
    """Whether ``name`` is one of the full-weights files (``model.safetensors``, a shard, the index)."""
    return bool(_WEIGHT_NAME.match(name))


def weight_set(names: Iterable[str]) -> set[str] | None:
    """The names of the whole set of weight files that one of ``names`` belongs to: ``{model.safetensors}``,
    or every shard of its count and the index; None when ``names`` holds no weights file but the index."""
    names = list(names)
    if WEIGHTS_FILE in names:
        return {WEIGHTS_FILE}
    found = next((m for m in map(_SHARD_NAME.match, names) if m), None)
    if found is None:
        return None
    count = int(found.group(1))
    return {_SHARD_FILE.format(i, count) for i in range(1, count + 1)} | {INDEX_FILE}


def parse_size(value: Any) -> int:
    """A shard-size limit in bytes: an int, or a string with a unit as transformers takes it (``5GB``, ``2GiB``).

    Raises:
        ValueError: Not such a size (the message says what is expected).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected {SIZE_EXPECTED}, got {value!r}")
    if isinstance(value, str):
        text = value.strip().upper()
        unit = next((u for u in sorted(_UNITS, key=len, reverse=True) if text.endswith(u)), None)
        try:
            number = int(text) if unit is None else float(text[:-len(unit)]) * _UNITS[unit]
        except ValueError:
            raise ValueError(f"expected {SIZE_EXPECTED}, got {value!r}") from None
        value = int(number)
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected {SIZE_EXPECTED}, got {value!r}")
    return value


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a state dict, known without reading or gathering it."""

    name: str
    shape: tuple[int, ...]
    dtype: Any  # a torch.dtype

    @property
    def nbytes(self) -> int:
        """Its size in a safetensors file."""
        count = 1
        for n in self.shape:
            count *= n
        return count * self.dtype.itemsize


class WeightSource(Protocol):
    """Full weights to be read or gathered a group at a time (a model, a state dict, files, a DCP folder)."""

    specs: list[TensorSpec]

    def tensors(self, names: Sequence[str]) -> Iterator[tuple[str, Any]]:
        """The full tensors ``names`` on the CPU (None on a rank that only takes part in gathering them)."""

    def finish(self) -> None:
        """Gather whatever was not gathered yet (the collectives every rank must run; a no-op for files)."""


def shard_plan(specs: Sequence[TensorSpec], max_shard_size: int) -> list[tuple[str, list[str]]]:
    """The files the weights go to and the tensors of each, as transformers splits them.

    Tensors stay in order; a file is closed when the next tensor would take it over ``max_shard_size``;
    a tensor bigger than the limit gets a file of its own. One file is ``model.safetensors``.
    """
    groups: list[list[str]] = []
    size = 0
    for spec in specs:
        if not groups or (size + spec.nbytes > max_shard_size and size > 0):
            groups.append([])
            size = 0
        groups[-1].append(spec.name)
        size += spec.nbytes
    if len(groups) <= 1:
        return [(WEIGHTS_FILE, groups[0] if groups else [])]
    return [(_SHARD_FILE.format(i, len(groups)), names) for i, names in enumerate(groups, 1)]


def save_full_weights(folder: str | Path, source: WeightSource, write: bool = True,
                      max_shard_size: int = DEFAULT_MAX_SHARD_SIZE) -> list[Path]:
    """Write ``source``'s full weights into ``folder`` (a staging folder: each file is written in place).

    Every rank of a sharded model calls this (the gathers are collectives); only the one with ``write``
    writes. A write that fails still gathers the remaining tensors before raising, so the other ranks are
    not left waiting.

    Args:
        folder: An existing folder.
        source: The weights (:func:`model_weights`, or :mod:`distlearn.training.weight_files`' readers).
        write: Whether this process writes the files (the main process).
        max_shard_size: Bytes above which the weights are split into several files with an index.

    Returns:
        The files written (empty where ``write`` is false).
    """
    if not write:
        source.finish()  # the gathers the writing rank runs
        return []
    folder = Path(folder)
    plan = shard_plan(source.specs, max_shard_size)
    written: list[Path] = []
    failure: BaseException | None = None
    for name, names in plan:
        tensors = dict(source.tensors(names))  # one file's tensors at most, then released
        if failure is None:
            try:
                written.append(_write_file(folder / name, tensors))
            except BaseException as exc:  # noqa: BLE001 - raised below, once the gathers are done
                failure = exc
        del tensors
    if failure is not None:
        raise failure
    if len(plan) > 1:
        written.append(_write_index(folder, source.specs, plan))
    return written


def written_by_main(source: WeightSource, write: Callable[..., T], *args: Any) -> T:
    """``write(*args)`` on the main process, then whatever gathers it left undone (it failed before or while
    writing the weights): the other ranks, in :meth:`WeightSource.finish`, run every gather either way."""
    try:
        return write(*args)
    finally:
        source.finish()


def _write_file(path: Path, tensors: Mapping[str, Any]) -> Path:
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(dict(tensors), str(path), metadata={"format": "pt"})  # transformers checks the format
    except SafetensorError as exc:  # its I/O errors (no such folder, disk full): an OSError for the callers
        raise OSError(f"cannot write {path}: {exc}") from None
    return path


def _write_index(folder: Path, specs: Sequence[TensorSpec], plan: Iterable[tuple[str, list[str]]]) -> Path:
    weight_map = {name: file for file, names in plan for name in names}
    index = {"metadata": {"total_size": sum(s.nbytes for s in specs)}, "weight_map": weight_map}
    path = folder / INDEX_FILE
    path.write_text(json.dumps(index, indent=2, sort_keys=False) + "\n")
    return path


def _host_copy(tensor: Any) -> Any:
    """A contiguous CPU tensor of its own: safetensors refuses tensors that share memory (tied weights)."""
    import torch

    out = tensor.detach().to("cpu")
    if out.data_ptr() == tensor.data_ptr() or not out.is_contiguous():
        out = out.clone(memory_format=torch.contiguous_format)
    return out


class StateDictWeights:
    """A state dict already in memory (a plain model's, or a test's), as a source."""

    def __init__(self, state_dict: Mapping[str, Any]) -> None:
        self._state = state_dict
        self.specs = [TensorSpec(k, tuple(v.shape), v.dtype) for k, v in state_dict.items()]

    def tensors(self, names: Sequence[str]) -> Iterator[tuple[str, Any]]:
        for name in names:
            yield name, _host_copy(self._state[name])

    def finish(self) -> None:
        """Nothing to gather."""


class ModelWeights:
    """The full weights of a model sharded with FSDP2, gathered a tensor at a time on every rank.

    Args:
        state_dict: The model's sharded state dict (``get_model_state_dict(model)``: DTensor values, the
            user's module's key names).
        main: Whether this process keeps the gathered tensors (the others only take part).
    """

    def __init__(self, state_dict: Mapping[str, Any], main: bool) -> None:
        self._state, self._main, self._done = state_dict, main, 0
        self.specs = [TensorSpec(k, tuple(v.shape), v.dtype) for k, v in state_dict.items()]

    def tensors(self, names: Sequence[str]) -> Iterator[tuple[str, Any]]:
        for name in names:
            expected = self.specs[self._done].name if self._done < len(self.specs) else None
            if name != expected:  # every rank gathers in one order, or the collectives pair wrongly
                raise RuntimeError(f"ModelWeights: gathered out of order ({name!r}, expected {expected!r})")
            self._done += 1
            yield name, self._gather(self._state[name])

    def _gather(self, value: Any) -> Any:
        from torch.distributed.tensor import DTensor

        if isinstance(value, DTensor):
            if value.device.type != value.device_mesh.device_type:  # parameters offloaded to the CPU (NCCL needs
                value = value.to(value.device_mesh.device_type)     # the shard on the mesh's device to gather it)
            value = value.full_tensor()  # a collective on the mesh: this one tensor, whole, on every rank
        return _host_copy(value) if self._main else None

    def finish(self) -> None:
        """Gather (and drop) every tensor not gathered yet: the collectives the other ranks run."""
        rest = [s.name for s in self.specs[self._done:]]
        for _ in self.tensors(rest):
            pass


def as_source(weights: Mapping[str, Any] | WeightSource) -> WeightSource:
    """``weights`` as a source: a state dict is wrapped, a source is itself."""
    return weights if hasattr(weights, "specs") else StateDictWeights(weights)


def is_sharded(model: Any) -> bool:
    """Whether ``model`` is sharded with FSDP2 (DTensor parameters)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def model_weights(accelerator: Any, model: Any) -> StateDictWeights | ModelWeights:
    """The full weights of a prepared model as a source (every rank calls it).

    FSDP2: the sharded state dict (no gathering yet; DCP's ``get_model_state_dict`` names the keys as the
    user's module does, without compile or wrapper prefixes). Otherwise ``accelerator.get_state_dict``, as
    the weights were always taken (a collective under FSDP1's full state dicts).
    """
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return ModelWeights(get_model_state_dict(model), accelerator.is_main_process)
    return StateDictWeights(accelerator.get_state_dict(model))
