"""Writing a run's outputs whole or not at all: each file, and the files as one set.

Each file is written to a temporary name in the same folder and renamed into place
(``os.replace`` is atomic), so a crash never leaves a half-written file. The set is
written into a staging folder, committed by renaming that folder, then moved file by
file into place; :func:`recover_set` finishes (or, before the commit, undoes) a
replacement that a killed process left, so the folder holds the old set or the new one.

Per-batch values live beside the record: ``record.json`` keeps the per-epoch numbers
and ``batches.jsonl`` one line per batch (:func:`split_batches`, :func:`read_record`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..runtime.launch import outputs_test_signal
from ..training.full_weights import is_weights_file, weight_set

__all__ = ["BATCHES_KEY", "STAGING", "SWAPPING", "atomic_write", "read_record",
           "recover_set", "replace_set", "split_batches", "to_jsonable", "write_batches", "write_config",
           "write_record"]

STAGING = ".outputs-staging"  # the new set being written: a kill leaves it, and recover_set removes it
SWAPPING = ".outputs-new"  # the new set, complete: recover_set moves what is left of it into place
BATCHES_KEY = "batch_records"  # the epoch record's per-batch part, kept in batches.jsonl
# Tests only: "<point>:<SIGNAL>" sends this process SIGNAL at a point of replace_set, e.g. "stage:2:SIGKILL"
# after the second file is staged, "swap:0:SIGTERM" right after the commit, "swap:3:SIGKILL" after 3 moves.


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


def replace_set(folder: str | Path, writers: Mapping[str, Callable[[Path], Any]]) -> list[Path]:
    """Replace a set of files in ``folder`` as one: after a kill, and the next :func:`recover_set`,
    the folder holds the old set or the new one, never a mix.

    Args:
        folder: The folder holding the set (other files and folders in it are left alone).
        writers: File name -> a function writing that file to the path it is given; one that writes
            several files beside it (the full weights, split into shards) returns their paths as a list.

    Returns:
        The files, in the order of ``writers``.
    """
    from ..training.durable import fsync_dir, fsync_file

    folder = Path(folder)
    recover_set(folder)  # a replacement a killed process left is finished (or undone) first
    staging = folder / STAGING
    staging.mkdir()
    files: list[Path] = []
    try:
        for n, (name, write) in enumerate(writers.items(), 1):
            made = write(staging / name)
            for path in made if isinstance(made, list) else [staging / name]:  # the weights may be several files
                fsync_file(path)  # durable before the commit says the set is complete
                files.append(folder / Path(path).name)
            _test_signal(f"stage:{n}")
        fsync_dir(staging)
        os.replace(staging, folder / SWAPPING)  # the commit: from here on the new set wins
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # the old set was not touched
        raise
    fsync_dir(folder)
    _test_signal("swap:0")
    _swap_in(folder)
    return files


def recover_set(folder: str | Path) -> str | None:
    """Finish or undo a :func:`replace_set` that a killed process left in ``folder``.

    Call it before anything reads the set. A complete new set (the commit happened) is moved
    into place; a staged one that was never committed is removed, leaving the old set.

    Returns:
        ``"completed"``, ``"rolled back"``, or None when nothing was left.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    outcome = None
    if (folder / SWAPPING).is_dir():
        _swap_in(folder)
        outcome = "completed"
    if (folder / STAGING).exists():
        shutil.rmtree(folder / STAGING)
        outcome = outcome or "rolled back"
    return outcome


def _swap_in(folder: Path) -> None:
    """Move the committed set's files into place; safe to repeat after a kill (moved files are gone from it)."""
    from ..training.durable import fsync_dir

    new = folder / SWAPPING
    names = sorted(p.name for p in new.iterdir())
    # The old set's weights in other files (one file against shards) go: the new set's weights are still all
    # in `new` on the first pass, and a pass after a kill finds the set from what is left (moves are sorted,
    # so the index, which names no count, is the last to move and nothing stale is left by then).
    keep = weight_set(names)
    if keep is not None:
        for old in folder.iterdir():
            if is_weights_file(old.name) and old.name not in keep:
                old.unlink()
    for n, name in enumerate(names, 1):  # record.json sorts last of the outputs
        os.replace(new / name, folder / name)
        _test_signal(f"swap:{n}")
    new.rmdir()
    fsync_dir(folder)


def _test_signal(point: str) -> None:
    """Send this process the signal that ``DISTLEARN_TEST_OUTPUTS_SIGNAL`` names for ``point`` (tests only)."""
    wanted = outputs_test_signal()
    where, _, name = wanted.rpartition(":")
    if where == point:
        os.kill(os.getpid(), signal.Signals[name])


def write_config(path: str | Path, config: Mapping[str, Any]) -> Path:
    """The resolved config as YAML; ``distlearn train <path>`` runs it again."""
    from omegaconf import OmegaConf

    text = OmegaConf.to_yaml(OmegaConf.create(dict(config)))
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_record(path: str | Path, record: Mapping[str, Any]) -> Path:
    """The training record as strict JSON: NaN/inf become null, tensors become numbers."""
    text = json.dumps(to_jsonable(record), indent=1, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_batches(path: str | Path, rows: list[Mapping[str, Any]]) -> Path:
    """Per-batch rows as JSON Lines (one strict JSON object per line), from :func:`split_batches`."""
    text = "".join(json.dumps(to_jsonable(row), allow_nan=False) + "\n" for row in rows)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def split_batches(record: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The record without per-batch values, and those values as rows.

    Returns:
        ``(record, rows)``: ``record`` with ``batch_records`` left out of every epoch; one row per
        batch, ``{"epoch": e, "batch": b, **the batch's record}``, epochs and batches in order.
    """
    epochs, rows = {}, []
    for epoch, entry in (record.get("training") or {}).items():
        entry = dict(entry)
        for batch, values in (entry.pop(BATCHES_KEY, None) or {}).items():
            rows.append({"epoch": int(epoch), "batch": int(batch), **values})
        epochs[epoch] = entry
    return {**record, "training": epochs} if "training" in record else dict(record), rows


def read_record(folder: str | Path) -> dict[str, Any]:
    """A run folder's record as ``BackwardLearner.train`` returned it: record.json with each epoch's
    ``batch_records`` put back from batches.jsonl (keys as strings, as JSON has them).

    A folder without batches.jsonl (written before it existed) gives record.json as it is.
    """
    folder = Path(folder)
    record = json.loads((folder / "record.json").read_text())
    try:
        lines = (folder / "batches.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return record
    batches: dict[str, dict[str, Any]] = {}
    for line in lines:
        row = json.loads(line)
        batches.setdefault(str(row.pop("epoch")), {})[str(row.pop("batch"))] = row
    for epoch, entry in record.get("training", {}).items():
        record["training"][epoch] = _with_batches(entry, batches.get(epoch, {}))
    return record


def _with_batches(entry: dict[str, Any], batches: dict[str, Any]) -> dict[str, Any]:
    """The epoch record with ``batch_records`` where the learner puts it: before ``test_result``."""
    keys = list(entry)
    at = keys.index("test_result") if "test_result" in keys else len(keys)
    return {**{k: entry[k] for k in keys[:at]}, BATCHES_KEY: batches, **{k: entry[k] for k in keys[at:]}}


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
