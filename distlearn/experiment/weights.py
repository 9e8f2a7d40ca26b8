"""Saved weights: where a run or a checkpoint keeps them, reading them, and loading them into a model.

A run folder keeps its final weights in ``model.safetensors``; a checkpoint folder
(``checkpoints/step-*``, written by ``accelerator.save_state``) keeps them under the same
name; ``best/model.safetensors`` holds the best epoch's (``run.checkpoint.keep_best``).
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

__all__ = ["INIT_FROM", "WEIGHTS_FILE", "check_init_from", "init_from", "load_weights", "read_weights",
           "weight_problem", "weights_file"]

WEIGHTS_FILE = "model.safetensors"
INIT_FROM = "init_from"  # the model_configs key
_SHARDED = "pytorch_model_fsdp_0"  # a checkpoint saved under FSDP with sharded state dicts


def weights_file(path: str | Path) -> Path:
    """The weights file a run folder, a checkpoint folder or a ``.safetensors`` file stands for.

    Raises:
        ValueError: No such path, or a folder holding no ``model.safetensors`` (what it holds instead said).
    """
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{str(path)!r} is not a .safetensors file; give a run folder, a checkpoint folder "
                             f"or a {WEIGHTS_FILE} file")
        return path
    if not path.exists():
        raise ValueError(f"{str(path)!r} does not exist; give a run folder, a checkpoint folder or a "
                         f"{WEIGHTS_FILE} file")
    if (path / WEIGHTS_FILE).is_file():
        return path / WEIGHTS_FILE
    if (path / _SHARDED).exists():
        raise ValueError(f"{str(path)!r} holds FSDP-sharded weights ({_SHARDED}/), which cannot be read as one file; "
                         f"use the run folder's {WEIGHTS_FILE} (gathered at the end of training)")
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
    """The tensors of a ``.safetensors`` file, on the CPU.

    Raises:
        ValueError: The file cannot be read as safetensors (truncated, another format).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"cannot read the weights in {path}: {exc}") from None


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

    state = read_weights(path)
    problem = weight_problem(model, state)
    if problem is not None:
        raise ValueError(f"the weights in {path} do not fit the model {type(model).__name__}: {problem}. "
                         "The model config must be the one the weights were trained with")
    with torch.no_grad():
        model.load_state_dict(state, strict=False)  # checked above: only tied names may be left out


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
