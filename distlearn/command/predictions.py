"""The file ``distlearn predict`` writes: one row per test sample (or per target token), in dataset order.

Columns, the same in both formats (a ``.npy`` file holds a structured array with these fields;
read it with ``np.load(path)["prediction"]``):

- classification: ``index``, ``target``, ``prediction`` (the class), ``score`` (one per class:
  ``score_0 ..`` in a CSV; the probability for a binary ``BCEWithLogitsLoss``);
- regression: ``index``, ``target``, ``prediction`` (``target_0 ..`` for several outputs);
- token labels: ``row`` (the test sample), ``position`` (the label's position in it), ``target``,
  ``prediction`` (the argmax), one row per target token (``ignore_index`` left out).

Floats are written with the shortest repr that reads back to the same float64, so a file is the
same byte for byte whenever the numbers are.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_write

__all__ = ["FORMATS", "check_output", "prediction_table", "token_positions", "write_predictions"]

FORMATS = (".csv", ".npy")


def check_output(output: str | Path, overwrite: bool, protected: Sequence[Path] = ()) -> Path:
    """The checked ``--output`` path (absolute): a known suffix, a writable folder, no file replaced unasked.

    Args:
        protected: Files never replaced (the run's own outputs).

    Raises:
        ValueError: A problem with the path, naming the fix.
    """
    path = Path(output).expanduser().absolute()
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"--output {str(output)!r}: unknown format {path.suffix or '(no suffix)'!r}; "
                         f"expected a file ending in {' or '.join(FORMATS)}")
    if path.resolve() in {p.resolve() for p in protected}:
        raise ValueError(f"--output {str(output)!r} is one of the run's own files: choose another path")
    if path.is_dir():
        raise ValueError(f"--output {str(output)!r} is a folder; give a file path")
    if path.exists() and not overwrite:
        raise ValueError(f"--output {str(output)!r} exists; choose another path or pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise ValueError(f"--output {str(output)!r}: no folder {str(path.parent)!r}; create it first")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ValueError(f"--output {str(output)!r}: the folder {str(path.parent)!r} is not writable")
    return path


def token_positions(loader: Any, label_of: Any, label_shift: int, ignore_index: int) -> np.ndarray | None:
    """``(row, position)`` of every target token of the test loader's batches, in dataset order; None when the
    labels are not tokens (one label per sample).

    Args:
        loader: The test loader as built (not prepared: every sample once, in order).
        label_of: ``batch -> labels`` (the learner's reading of a batch).
        label_shift, ignore_index: The learner's: a target token is a label at position >= ``label_shift``
            that is not ``ignore_index`` (the tokens ``test()`` lists in ``y_pred``).
    """
    from ..training.outputs import token_labels

    found: list[np.ndarray] = []
    first_row = 0
    for batch in loader:
        labels = label_of(batch)
        if not token_labels(labels):
            return None
        labels = labels.reshape(labels.shape[0], -1)[:, label_shift:]
        rows, positions = (labels != ignore_index).nonzero(as_tuple=True)  # row-major: test()'s order
        found.append(np.stack([rows.numpy() + first_row, positions.numpy() + label_shift], axis=1))
        first_row += labels.shape[0]
    return np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)


def prediction_table(result: Mapping[str, Any], positions: np.ndarray | None) -> dict[str, np.ndarray]:
    """The columns of the file from ``test()``'s full result (``y_pred``, ``y_true``, ``y_score``).

    Raises:
        ValueError: ``positions`` do not match the target tokens ``test()`` returned.
    """
    pred, true = np.asarray(result["y_pred"]), np.asarray(result["y_true"])
    if positions is not None:
        if len(positions) != len(pred):
            raise ValueError(f"found {len(positions)} target tokens in the test data, but the model's pass gave "
                             f"{len(pred)} predictions")
        return {"row": positions[:, 0], "position": positions[:, 1], "target": true, "prediction": pred}
    table = {"index": np.arange(len(pred)), "target": true, "prediction": pred}
    score = result.get("y_score")
    if score is not None and pred.dtype.kind in "iub":  # classes: their scores too (regression: the same values)
        table["score"] = np.asarray(score, dtype=np.float64)
    return table


def write_predictions(path: Path, table: Mapping[str, np.ndarray]) -> Path:
    """Write the table as CSV or ``.npy`` (by suffix), through a temporary file renamed into place."""
    if path.suffix.lower() == ".npy":
        return atomic_write(path, lambda tmp: _write_npy(tmp, table))
    return atomic_write(path, lambda tmp: _write_csv(tmp, table))


def _write_npy(tmp: Path, table: Mapping[str, np.ndarray]) -> None:
    n = len(next(iter(table.values())))
    dtype = [(name, _dtype(col), col.shape[1:]) for name, col in table.items()]
    out = np.zeros(n, dtype=dtype)
    for name, col in table.items():
        out[name] = col
    with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to the temporary name
        np.save(f, out, allow_pickle=False)


def _dtype(col: np.ndarray) -> Any:
    return np.int64 if col.dtype.kind in "iub" else np.float64


def _write_csv(tmp: Path, table: Mapping[str, np.ndarray]) -> None:
    names, columns = [], []
    for name, col in table.items():
        flat = col.reshape(len(col), -1) if col.ndim > 1 else col[:, None]
        names += [name] if col.ndim == 1 else [f"{name}_{j}" for j in range(flat.shape[1])]
        columns.append(flat.tolist())  # Python ints and floats: repr is exact and the shortest
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        for parts in zip(*columns):
            writer.writerow([value for part in parts for value in part])
