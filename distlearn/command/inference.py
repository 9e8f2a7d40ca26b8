"""``distlearn evaluate RUN_DIR`` and ``distlearn predict RUN_DIR --output FILE``: a saved run's weights on its
test data (or, through overrides, other data of the same shape).

Both rebuild the run from its ``config.yaml`` (:mod:`distlearn.experiment.saved_run`), load the weights
``--checkpoint`` names (``last``, ``best`` or a checkpoint folder) and run the learner's ``test()``, which
counts every test sample once, in dataset order, on any number of processes: so they print and write
what one process gives. Every rank runs every step; the main process alone writes and talks to W&B.

``evaluate`` writes ``RUN_DIR/eval-<checkpoint>.json`` (its own file, replaced by the next evaluation of
the same weights; the run's own files are never touched) and, when the run was tracked, adds the numbers
to that W&B run's summary as ``eval/<checkpoint>/test_loss`` and ``eval/<checkpoint>/<metric>`` (a summary,
not a logged step: W&B's steps only increase, and the run's last step is its last epoch).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .console import logger, setup_logging
from .errors import RunError, on_main
from .group import FINISHED_GROUP, build_run_accelerator, close

__all__ = ["evaluate_run", "predict_run"]

T = TypeVar("T")
_RUN_FILES = ("config.yaml", "record.json", "batches.jsonl", "model.safetensors", "curves.png")


def evaluate_run(run_dir: str, checkpoint: str = "last", overrides: Sequence[str] = (),
                 quiet: bool = False) -> dict[str, Any]:
    """``distlearn evaluate``: the test loss and every metric of a run's weights; returns what eval-*.json holds.

    Raises:
        RunError: Bad input (no run folder, no such weights, a bad override, weights that do not fit).
    """
    def work(saved: Any, accelerator: Any) -> dict[str, Any]:
        result = _tested(saved.evaluate)
        values = _eval_values(saved, result, overrides)
        on_main(accelerator, "writing the evaluation", _finish_evaluation, saved, values)
        return values

    return _session(run_dir, checkpoint, overrides, quiet, work)


def predict_run(run_dir: str, output: str, checkpoint: str = "last", overrides: Sequence[str] = (),
                overwrite: bool = False, quiet: bool = False) -> Path:
    """``distlearn predict``: one row per test sample (or target token) in dataset order, written to ``output``.

    Raises:
        RunError: Bad input, as :func:`evaluate_run`, and an output that exists (without ``overwrite``),
            cannot be written or has an unknown suffix.
    """
    from .predictions import check_output

    folder = Path(run_dir).expanduser()
    try:  # before any process group or data: a wrong path costs nothing
        path = check_output(output, overwrite, [folder / name for name in _RUN_FILES])
    except ValueError as exc:
        raise RunError(str(exc)) from None

    def work(saved: Any, accelerator: Any) -> Path:
        positions = _positions(saved)  # None unless the labels are tokens (then no per-token scores)
        result = _tested(lambda: saved.predict(return_scores=positions is None))
        return on_main(accelerator, "writing the predictions", _write_predictions, saved, result, positions, path)

    return _session(run_dir, checkpoint, overrides, quiet, work)


def _session(run_dir: str, checkpoint: str, overrides: Sequence[str], quiet: bool,
             work: Callable[[Any, Any], T]) -> T:
    """Read the run, form the process group, rebuild the run with its weights, ``work(saved, accelerator)``, close."""
    from ..experiment.saved_run import read_run, rebuild
    from ..specs import ConfigError

    try:
        folder, weights, resolved = read_run(run_dir, checkpoint, overrides)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        raise RunError(str(exc)) from None
    accelerator = build_run_accelerator(resolved, {})  # the run's precision and seed; W&B is ours, not Accelerate's
    setup_logging(accelerator.is_main_process, quiet)
    together, saved = True, None
    try:
        try:
            saved = rebuild(folder, weights, resolved, accelerator)
        except (ConfigError, ValueError, OSError) as exc:  # the same files on every rank: the same error on each
            raise RunError(str(exc)) from None
        if accelerator.is_main_process and not quiet:
            logger.info("%s: %s (%s)", folder, weights.source, weights.path)
        return work(saved, accelerator)
    except BaseException as exc:
        together = (isinstance(exc, RunError) and exc.together) or getattr(exc, "every_rank_knows", False)
        raise
    finally:
        close(accelerator, together)
        if accelerator.num_processes > 1:  # freed by exit_now, as after training (see command/group.py)
            FINISHED_GROUP.extend([accelerator, saved])


def _tested(test: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``test()``; a batch the model cannot take is bad input (on every rank together, as in training)."""
    from ..training.batches import BatchError

    try:
        return test()
    except BatchError as exc:
        raise RunError(f"the data does not fit the model or learner: {exc}") from None


def _positions(saved: Any) -> Any:
    """``(row, position)`` of every target token of the test data, or None when the labels are not tokens."""
    from .predictions import token_positions

    runner = saved.learner._batches()  # the learner's own reading of a batch: its label key, shift, ignore_index
    loader = saved.experiment.data_loaders["test_loader"]

    def label_of(batch: Any) -> Any:
        return batch.get(runner.label_key) if isinstance(batch, Mapping) else batch[-1]

    return token_positions(loader, label_of, runner.label_shift, runner.ignore_index)


def _eval_values(saved: Any, result: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """What ``eval-<checkpoint>.json`` holds: the numbers, and which weights and data gave them (no times and no
    process count: the file is the same on any number of processes)."""
    weights = saved.weights
    return {
        "run_dir": str(saved.run_dir), "checkpoint": weights.label, "weights": str(weights.path),
        "source": weights.source, "epoch": weights.epoch, "overrides": list(overrides),
        "metric_name": result.get("metric_name"), "test_loss": result.get("test_loss"),
        "test_score": result.get("test_score"), "test_scores": dict(result.get("test_scores") or {}),
    }


def _finish_evaluation(saved: Any, values: dict[str, Any]) -> None:
    """Main process: eval-<checkpoint>.json, the W&B summary, the lines on the terminal."""
    from .files import atomic_write, to_jsonable

    path = saved.run_dir / f"eval-{values['checkpoint']}.json"
    text = json.dumps(to_jsonable(values), indent=1) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    tracked = _log_to_wandb(saved, values)
    numbers = [f"test_loss {values['test_loss']!r}"] + [f"{k} {v!r}" for k, v in values["test_scores"].items()]
    lines = [f"evaluated {values['source']} of {saved.run_dir}", "  " + ", ".join(numbers), f"  wrote {path}"]
    if tracked:
        lines.append(f"  {tracked}")
    print("\n".join(lines), flush=True)


def _log_to_wandb(saved: Any, values: Mapping[str, Any]) -> str | None:
    """Add the numbers to the run's W&B summary (resumed by id); a line saying so, or None (not tracked).

    A W&B failure is a warning: the evaluation is written already.
    """
    from ..experiment.saved_run import wandb_run_id
    from .record_numbers import finite
    from .tracking import resolve_mode, update_run_summary

    tracking = saved.experiment.config["run"]["tracking"]
    mode, _ = resolve_mode(tracking)
    run_id = wandb_run_id(saved.run_dir)
    if mode == "disabled" or run_id is None:
        return None
    prefix = f"eval/{values['checkpoint']}/"
    summary = {f"{prefix}test_loss": finite(values["test_loss"])}
    summary.update({f"{prefix}{k}": finite(v) for k, v in values["test_scores"].items()})
    try:
        update_run_summary(saved.run_dir, tracking, mode, run_id, {k: v for k, v in summary.items() if v is not None})
    except Exception as exc:  # noqa: BLE001 - see the docstring
        logger.warning("logging the evaluation to W&B run %s failed: %s: %s", run_id, type(exc).__name__, exc)
        return None
    return f"W&B run {run_id} ({mode}): summary {prefix}*"


def _write_predictions(saved: Any, result: Mapping[str, Any], positions: Any, path: Path) -> Path:
    """Main process: the predictions file, and a line saying what it holds."""
    from .predictions import prediction_table, write_predictions

    table = prediction_table(result, positions)
    write_predictions(path, table)
    rows = len(next(iter(table.values())))
    what = "target tokens" if "position" in table else "test samples"
    print(f"predicted {rows} {what} with {saved.weights.source} of {saved.run_dir}\n  wrote {path} "
          f"(columns: {', '.join(table)})", flush=True)
    return path
