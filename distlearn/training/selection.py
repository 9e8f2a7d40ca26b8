"""Choosing on the validation split: the best epoch, its kept weights, and early stopping.

One rule decides "best" everywhere (:func:`best_point`: the summary, ``curves.png`` and
``keep_best`` all use it): the highest value when the metric's ``higher_is_better``, else the
lowest (the loss is lower-is-better), the first such epoch on a tie. Early stopping counts the
evaluated epochs since the score last improved by more than ``min_delta`` (as Keras' and
Lightning's ``EarlyStopping``). Every rank decides from the same reduced validation result, so
every rank stops at the same epoch without a collective of its own; the state lives in the
checkpoint (:meth:`Chooser.state_dict`), so a resumed run stops where an uninterrupted one would.

``keep_best`` writes ``<folder>/best/model.safetensors`` and ``best/best.json``
(``{"epoch", "score", "metric"}``, the epoch 0-based as the record's keys) as one set: staged in
a hidden folder, then swapped in by renames (:func:`write_best`); :func:`recover_best` finishes or
undoes a swap a kill left, so ``best/`` is never half-written.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..options import is_int, is_number
from ..runtime import ranks
from .full_weights import WeightSource, as_source, model_weights, save_full_weights, written_by_main

logger = logging.getLogger(__name__)

__all__ = ["BEST_DIR", "VAL_SIZE_KEY", "Chooser", "EarlyStopping", "Selection", "best_point", "early_stopping_problems",
           "finite", "new_chooser", "recover_best", "resume_choice", "val_fields", "write_best"]

BEST_DIR = "best"
VAL_SIZE_KEY = "data_configs.data_parameters.val_size"
_STAGING = ".best-staging"  # the new best/ being written: a kill leaves it, recover_best removes it
_OLD = ".best-old"  # the previous best/ while the new one is renamed in


def best_point(points: Sequence[tuple[int, float]], higher_is_better: bool) -> tuple[int, float]:
    """The (epoch, value) pair with the best value: the highest when ``higher_is_better``, else the
    lowest; the first such epoch on a tie.

    Args:
        points: (epoch, value) pairs, at least one.
        higher_is_better: The metric's ``higher_is_better`` (False for a loss).
    """
    return (max if higher_is_better else min)(points, key=lambda p: p[1])


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when the validation score has not improved by more than ``min_delta`` for ``patience``
    evaluated epochs (``run.early_stopping`` in a config)."""

    patience: int
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        problems = early_stopping_problems({"patience": self.patience, "min_delta": self.min_delta})
        if problems:
            raise ValueError(f"EarlyStopping: {problems[0][0]}: {problems[0][1]}")


def early_stopping_problems(value: Any) -> list[tuple[str, str]]:
    """What is wrong with an early-stopping mapping (``patience``, ``min_delta``), as (key, problem)
    pairs (key "" for the whole); the one owner of their ranges, for the Python API and the config
    validator alike."""
    if not isinstance(value, Mapping):
        return [("", f"expected null or a mapping {{patience: N, min_delta: x}}, got {value!r}")]
    problems = [(str(key), "unknown key; expected patience and min_delta") for key in value
                if key not in ("patience", "min_delta")]
    patience = value.get("patience")
    if not (is_int(patience) and patience >= 1):
        problems.append(("patience", f"expected an int >= 1 (evaluated epochs without improvement), got {patience!r}"))
    delta = value.get("min_delta", 0.0)
    if not (is_number(delta) and math.isfinite(delta) and delta >= 0):
        problems.append(("min_delta", f"expected a number >= 0, got {delta!r}"))
    return problems


@dataclass(frozen=True)
class Selection:
    """What ``BackwardLearner.train(selection=...)`` does with the validation results.

    Attributes:
        keep_best: A folder: the best epoch's weights go to ``<keep_best>/best/`` (see module doc);
            None: none kept.
        early_stopping: When to stop early, or None.
    """

    keep_best: str | Path | None = None
    early_stopping: EarlyStopping | None = None

    def __post_init__(self) -> None:
        if self.early_stopping is not None and not isinstance(self.early_stopping, EarlyStopping):
            raise TypeError(f"Selection.early_stopping: expected an EarlyStopping or None, "
                            f"got {type(self.early_stopping).__name__}")


@dataclass
class _State:
    """What a checkpoint keeps of the choice (the same on every rank)."""

    best_epoch: int | None = None
    best_score: float | None = None
    reference: float | None = None  # the score early stopping last saw improve by more than min_delta
    waited: int = 0  # evaluated epochs since then
    stopped_epoch: int | None = None


@dataclass
class Chooser:
    """Follows the validation results of one ``train()``: the best epoch, patience, the kept weights."""

    selection: Selection
    metric_name: str  # the primary metric's name, or "loss"
    higher_is_better: bool
    loader: Any = None  # the validation loader
    state: _State = field(default_factory=_State)

    def observe(self, epoch: int, val_result: Mapping[str, Any]) -> bool:
        """Take an evaluated epoch's result; returns whether it is the new best epoch."""
        key = "val_loss" if self.metric_name == "loss" else "val_score"
        self._check_one_number(val_result.get(key))
        score = finite(val_result.get(key))
        if score is None:  # a NaN score is never the best, and counts as no improvement
            self._wait(epoch)
            return False
        s = self.state
        improved = s.best_score is None or best_point([(s.best_epoch, s.best_score), (epoch, score)],
                                                      self.higher_is_better)[0] == epoch
        if improved:
            s.best_epoch, s.best_score = epoch, score
        stopping = self.selection.early_stopping
        delta = stopping.min_delta if stopping is not None else 0.0
        sign = 1.0 if self.higher_is_better else -1.0
        if s.reference is None or sign * (score - s.reference) > delta:
            s.reference, s.waited = score, 0
        else:
            self._wait(epoch)
        return improved

    def _check_one_number(self, value: Any) -> None:
        """A user's metric whose value holds several numbers, refused where it would choose (every rank holds
        the same reduced value: every rank raises)."""
        wanted = self.selection.keep_best is not None or self.selection.early_stopping is not None
        if not wanted or value is None:
            return
        if hasattr(value, "numel"):  # a tensor
            count = int(value.numel())
        else:  # a list, a numpy array or scalar, a number
            count = len(value) if isinstance(value, (list, tuple)) else int(getattr(value, "size", 1))
        if count != 1:
            raise ValueError(not_one_number(f"{self.metric_name!r}, a value of {count} numbers"))

    def _wait(self, epoch: int) -> None:
        self.state.waited += 1
        stopping = self.selection.early_stopping
        if stopping is not None and self.state.waited >= stopping.patience and self.state.stopped_epoch is None:
            self.state.stopped_epoch = epoch

    @property
    def stopped(self) -> bool:
        """Whether early stopping has decided to stop (after ``state.stopped_epoch``)."""
        return self.state.stopped_epoch is not None

    def record_fields(self, n_epochs: int) -> dict[str, Any]:
        """The record's top-level keys: ``best_epoch``, ``best_score``, ``best_metric``, and with early
        stopping ``stopped_early`` (and ``stopped_epoch`` when it stopped before ``n_epochs``)."""
        s = self.state
        out: dict[str, Any] = {"best_epoch": s.best_epoch, "best_score": s.best_score, "best_metric": self.metric_name}
        if self.selection.early_stopping is not None:
            early = s.stopped_epoch is not None and s.stopped_epoch + 1 < n_epochs
            out["stopped_early"] = early
            if early:
                out["stopped_epoch"] = s.stopped_epoch
        return out

    def take(self, epoch: int, val_result: Mapping[str, Any], accelerator: Any, model: Any) -> None:
        """:meth:`observe` an evaluated epoch; a new best with ``keep_best`` writes ``best/`` (every rank
        calls this: gathering the weights is a collective under FSDP; the main process writes)."""
        if not self.observe(epoch, val_result) or self.selection.keep_best is None:
            return
        _best_from_model(accelerator, model, self.selection.keep_best, epoch, self.state.best_score, self.metric_name)

    def state_dict(self) -> dict[str, Any]:
        """The choice so far, for the checkpoint."""
        return dict(vars(self.state))

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Restore :meth:`state_dict` (None: a checkpoint from before this existed; start afresh)."""
        self.state = _State(**dict(state)) if state else _State()


def new_chooser(selection: Selection | None, metric: Any, data_loader: Any) -> Chooser | None:
    """The chooser of a ``train()``: one whenever ``data_loader`` has a ``"val_loader"`` (the record
    then names the best epoch), None without one.

    Raises:
        ValueError: ``selection`` asks for keep_best or early stopping without a validation loader.
        TypeError: ``selection`` is not a :class:`Selection`.
    """
    if selection is not None and not isinstance(selection, Selection):
        raise TypeError(f"selection: expected a distlearn Selection or None, got {type(selection).__name__}")
    val_loader = data_loader.get("val_loader") if isinstance(data_loader, Mapping) else None
    wanted = selection is not None and (selection.keep_best is not None or selection.early_stopping is not None)
    if val_loader is None:
        if wanted:
            raise ValueError(
                "keep_best and early_stopping choose on a validation split, and data_loader has no 'val_loader'; "
                f"pass one (in a config: {VAL_SIZE_KEY}: a fraction or a count of the training rows)"
            )
        return None
    if metric is None:
        return Chooser(selection or Selection(), "loss", False, val_loader)
    if wanted and not getattr(metric, "scalar", True):
        raise ValueError(not_one_number(f"the primary metric {metric.name!r} ({type(_primary(metric)).__name__})"))
    return Chooser(selection or Selection(), str(metric.name), bool(metric.higher_is_better), val_loader)


def not_one_number(what: str) -> str:
    """The refusal of a selection metric whose value is not one number (a matrix, one score per label)."""
    return (f"keep_best and early_stopping choose an epoch on the primary metric's value: expected a metric "
            f"of one number, got {what}, which never compares as better; make a scalar metric the primary one "
            "(first in metric_configs, or Metrics(..., primary=...)), or turn keep_best and early_stopping off")


def _primary(metric: Any) -> Any:
    """A collection's primary metric; a metric itself."""
    return metric.metrics[metric.primary] if hasattr(metric, "primary") and hasattr(metric, "metrics") else metric


def resume_choice(chooser: Chooser | None, progress: Mapping[str, Any] | None, accelerator: Any, model: Any) -> None:
    """At a ``train()``'s start: the chooser's saved state loaded from ``progress`` (a checkpoint's; None:
    a fresh run), and on the main process ``best/`` recovered (a fresh run: no earlier run's ``best/``).

    ``keep_best`` turned on at a resume finds no ``best/``: it is seeded from the resumed weights when
    the checkpoint was saved at the end of the best epoch so far (they are that epoch's); otherwise the
    main process says that ``best/`` comes with the next improvement. Every rank calls it.
    """
    if chooser is None:
        return
    if progress is not None:
        chooser.load_state_dict(progress.get("selection"))
    folder = chooser.selection.keep_best
    if folder is None:
        return
    missing = ranks.on_main(accelerator, _recovered_and_missing, folder, progress is None)
    best = chooser.state.best_epoch
    if not missing or progress is None or best is None:
        return
    if int(progress["epoch"]) == best + 1 and int(progress.get("batches_done", 0)) == 0:
        _best_from_model(accelerator, model, folder, best, chooser.state.best_score, chooser.metric_name)
    elif accelerator.is_main_process:
        logger.warning("keep_best: best/ is empty and this checkpoint was not saved at the end of the best epoch so "
                       "far (epoch %d, %s %s), so its weights are not that epoch's: best/ is written at the next "
                       "epoch that improves on it", best, chooser.metric_name, chooser.state.best_score)


def _best_from_model(accelerator: Any, model: Any, folder: str | Path, epoch: int, score: float, metric: str) -> None:
    """:func:`write_best` of the prepared model's weights; every rank calls it (under FSDP the weights are
    gathered a tensor at a time, in step with the main process's writing)."""
    source = model_weights(accelerator, model)
    if accelerator.is_main_process:
        written_by_main(source, write_best, folder, source, epoch, score, metric)
    else:
        source.finish()


def _recovered_and_missing(folder: str | Path, fresh: bool) -> bool:
    """Main process: :func:`recover_best`, then whether ``best/`` is missing."""
    recover_best(folder, fresh=fresh)
    return not (Path(folder) / BEST_DIR).exists()


def val_fields(result: Mapping[str, Any]) -> dict[str, Any]:
    """A ``test()`` result on the validation loader as the record's ``val_result``: ``val_loss``,
    ``val_score``, ``val_scores``, ``time_cost``, ``metric_name``."""
    return {key.replace("test_", "val_", 1): value for key, value in result.items()}


def write_best(folder: str | Path, state_dict: Mapping[str, Any] | WeightSource, epoch: int, score: float,
               metric: str) -> Path:
    """Replace ``<folder>/best/`` with these weights (a state dict, or a source gathered a tensor at a time:
    :mod:`distlearn.training.full_weights`) and ``best.json``: staged, then renamed in.

    Returns:
        The ``best/`` folder.
    """
    from .durable import fsync_dir, fsync_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    recover_best(folder)
    staging, best, old = folder / _STAGING, folder / BEST_DIR, folder / _OLD
    staging.mkdir()
    try:
        source = as_source(state_dict)
        files = save_full_weights(staging, source)  # model.safetensors, or shards and their index
        (staging / "best.json").write_text(json.dumps({"epoch": epoch, "score": score, "metric": metric}) + "\n")
        for path in (*files, staging / "best.json"):
            os.chmod(path, 0o644)
            fsync_file(path)
        fsync_dir(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if best.exists():
        os.replace(best, old)  # from here until the next rename, recover_best puts the old one back
    os.replace(staging, best)
    shutil.rmtree(old, ignore_errors=True)
    fsync_dir(folder)
    return best


def recover_best(folder: str | Path, fresh: bool = False) -> str | None:
    """Finish or undo a :func:`write_best` that a kill left: a staged folder is removed; an old
    ``best/`` moved aside is put back when no new one took its place, else removed.
    ``fresh``: a new run starts in ``folder``: an earlier run's ``best/`` is removed too.

    Returns:
        What was done, or None when nothing was left.
    """
    folder = Path(folder)
    outcome = None
    if (folder / _STAGING).exists():
        shutil.rmtree(folder / _STAGING)
        outcome = "an unfinished best/ was removed"
    if (folder / _OLD).exists():
        if (folder / BEST_DIR).exists():
            shutil.rmtree(folder / _OLD)
        else:
            os.replace(folder / _OLD, folder / BEST_DIR)
            outcome = "the previous best/ was put back"
    if fresh and (folder / BEST_DIR).exists():
        shutil.rmtree(folder / BEST_DIR)
    return outcome


def finite(value: Any) -> float | None:
    """``value`` as a finite Python float (0-d tensors and numpy scalars too), else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several values
        return None
    return number if math.isfinite(number) else None
