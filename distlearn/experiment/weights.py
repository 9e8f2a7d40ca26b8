"""Saved weights: where a run or a checkpoint keeps them, reading them, and loading them into a model.

A run folder keeps its final weights in ``model.safetensors`` (above the size limit, HF-style
shards and ``model.safetensors.index.json``); a checkpoint folder (``checkpoints/step-*``,
written by ``accelerator.save_state``) keeps them under the same name, or under FSDP with
sharded state dicts as a DCP folder ``pytorch_model_fsdp_0/``; ``best/`` holds the best
epoch's (``run.checkpoint.keep_best``). Every form is read a group of tensors at a time
(:mod:`distlearn.training.weight_files`).
Loading checks the file against the model first, so that a mismatch names the keys and the
first shape that differ, instead of torch's list of every tensor.

``model_configs.init_from`` starts a new run from such weights (weights only: no optimizer,
no progress). Its path is checked without torch (:func:`check_init_from`, called by the config
validator); the keys and shapes when the model exists (:func:`init_from`, called by the build).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..specs import ConfigError
from ..training.full_weights import INDEX_FILE, WEIGHTS_FILE  # torch-free modules: the config check stays fast
from ..training.weight_files import DCP_MODEL_DIR, is_dcp_folder

__all__ = ["INDEX_FILE", "INIT_FROM", "WEIGHTS_FILE", "check_init_from", "init_from", "load_weights", "read_weights",
           "weight_problem", "weights_file"]

INIT_FROM = "init_from"  # the model_configs key


def weights_file(path: str | Path) -> Path:
    """The weights a run folder, a checkpoint folder or a file stands for (no torch): a ``.safetensors`` file,
    a ``model.safetensors.index.json`` of shards, or a sharded checkpoint's DCP folder.

    Raises:
        ValueError: No such path, or a folder holding no weights (what it holds instead said).
    """
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix != ".safetensors" and not path.name.endswith(".index.json"):
            raise ValueError(f"{str(path)!r} is not a .safetensors file or an {INDEX_FILE}; give a run folder, "
                             f"a checkpoint folder or a {WEIGHTS_FILE} file")
        return path
    if not path.exists():
        raise ValueError(f"{str(path)!r} does not exist; give a run folder, a checkpoint folder or a "
                         f"{WEIGHTS_FILE} file")
    for found in (path / WEIGHTS_FILE, path / INDEX_FILE):
        if found.is_file():
            return found
    for folder in (path / DCP_MODEL_DIR, path):
        if is_dcp_folder(folder):
            return folder
    if (path / DCP_MODEL_DIR).exists():
        raise ValueError(f"{str(path)!r}: its sharded weights ({DCP_MODEL_DIR}/) have no DCP metadata: the save "
                         "did not finish; use another checkpoint")
    raise ValueError(f"{str(path)!r} holds no {WEIGHTS_FILE}: it is not a finished run folder or a checkpoint "
                     "folder (a run that has not finished keeps its weights in checkpoints/step-*/)")


def check_init_from(value: Any, key: str, problems: list[str]) -> None:
    """The config check of ``model_configs.init_from`` (no torch): null, or a path holding weights."""
    if value is None:
        return
    if not isinstance(value, str) or not value:
        problems.append(f"{key}: expected a run folder, a checkpoint folder or a {WEIGHTS_FILE} path, got {value!r}")
        return
    try:
        weights_file(value)
    except ValueError as exc:
        problems.append(f"{key}: {exc}")


def read_weights(path: str | Path) -> dict[str, Any]:
    """Every tensor of the weights at ``path`` (from :func:`weights_file`), full, on the CPU.

    Raises:
        ValueError: They cannot be read (a truncated file, another format, a shard missing).
    """
    from ..training.weight_files import open_weights

    source = open_weights(path)
    return dict(source.tensors([s.name for s in source.specs]))


def weight_problem(model: Any, state: Mapping[str, Any]) -> str | None:
    """What keeps ``state`` from loading into ``model`` exactly, in one sentence; None when it fits.

    Names the missing keys and the unexpected ones (up to five each, with their counts) and the
    first tensor whose shape differs.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state and not _tied_to_saved(own, k, state)]
    unexpected = [k for k in state if k not in own]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
            parts.append(f"{len(keys)} {what} key{'s' if len(keys) != 1 else ''} ({shown})")
    shape = next(((k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)), None)
    if shape is not None:
        parts.append(f"the first shape mismatch: {shape[0]} is {list(shape[1])} in the file, "
                     f"{list(shape[2])} in the model")
    return "; ".join(parts) or None


def _tied_to_saved(own: Mapping[str, Any], key: str, state: Mapping[str, Any]) -> bool:
    """Whether the model's ``key`` shares its tensor with a key the file holds (a tied head): Accelerate's
    checkpoints save one name for a tied tensor, and loading that one fills both."""
    ptr = own[key].data_ptr()
    return any(k in state and k != key and v.data_ptr() == ptr for k, v in own.items())


def load_weights(model: Any, path: str | Path) -> None:
    """Load the weights in ``path`` (a file from :func:`weights_file`) into ``model``, exactly.

    Raises:
        ValueError: The file is unreadable, or its keys or shapes differ from the model's (named).
    """
    import torch

    from ..training.full_weights import DEFAULT_MAX_SHARD_SIZE, shard_plan
    from ..training.weight_files import open_weights

    source = open_weights(path)
    problem = weight_problem(model, {s.name: s for s in source.specs})  # shapes from the headers: nothing read yet
    if problem is not None:
        raise ValueError(f"the weights in {path} do not fit the model {type(model).__name__}: {problem}. "
                         "The model config must be the one the weights were trained with")
    for _, names in shard_plan(source.specs, DEFAULT_MAX_SHARD_SIZE):  # one file's worth in memory at a time
        with torch.no_grad():
            model.load_state_dict(dict(source.tensors(names)), strict=False)  # only tied names may be left out


def init_from(model: Any, source: str | Path, key: str = f"model_configs.{INIT_FROM}") -> Path:
    """``model_configs.init_from``: load a run's or checkpoint's weights into a freshly built model.

    Returns:
        The weights file loaded.

    Raises:
        ConfigError: Under ``key``: no weights there, or weights that do not fit the model.
    """
    try:
        path = weights_file(source)
        load_weights(model, path)
    except ValueError as exc:
        raise ConfigError([f"{key}: {exc}"]) from None
    return path
