"""Writing one output file whole or not at all: config.yaml, record.json and model.safetensors.

Every file is written to a temporary name in the same folder and renamed into place
(``os.replace`` is atomic), so a crash never leaves a half-written output.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "to_jsonable", "write_config", "write_model", "write_record"]


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write a file through a temporary name in the same folder, then rename it into place.

    Args:
        path: The final file.
        write: Writes the content to the temporary path it is given.

    Returns:
        ``path``. If ``write`` raises, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    # A unique name next to the target (same file system, so the rename is atomic); created by `write`
    # with the usual permissions (mkstemp would make it owner-only).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # some writers (safetensors) create owner-only files
        os.replace(tmp, path)  # atomic on POSIX and Windows: readers see the old file or the new one
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_config(path: str | Path, config: Mapping[str, Any]) -> Path:
    """The resolved config as YAML; ``distlearn train <path>`` runs it again."""
    from omegaconf import OmegaConf

    text = OmegaConf.to_yaml(OmegaConf.create(dict(config)))
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_record(path: str | Path, record: Mapping[str, Any]) -> Path:
    """The training record as strict JSON: NaN/inf become null, tensors become numbers."""
    text = json.dumps(to_jsonable(record), indent=1, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_model(path: str | Path, state_dict: Mapping[str, Any]) -> Path:
    """The weights as safetensors (load with ``safetensors.torch.load_model(model, path)``)."""
    from safetensors.torch import save_file

    # Own, contiguous CPU copies: safetensors refuses tensors that share memory (tied weights).
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def to_jsonable(value: Any) -> Any:
    """Plain JSON values: dict keys as strings, tensors/numpy as numbers or lists, NaN/inf as None."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # torch tensors, numpy arrays/scalars
        return to_jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask
