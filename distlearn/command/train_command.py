"""``distlearn train``: load and check the config, build, train, write the outputs, close.

Every rank runs every step (the collectives need them all); only the main process touches
files, the W&B run and the terminal. torch is imported when :func:`train` runs, after the
config was checked, not with this module.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..options import DEFAULT_KEEP_LAST, DEFAULT_RESUME_BATCH
from ..runtime import launch
from .console import logger, run_title, setup_logging
from .errors import EXIT_TRAINING_FAILED, RunError, Stopped, everywhere, on_main
from .group import FINISHED_GROUP, build_run_accelerator, close
from .resume import follows_epochs, resume_hint, say_complete, start_folder
from .shared_fs import shared_folder

__all__ = ["train"]


@dataclass
class _Session:
    """One ``distlearn train``: what its steps share."""

    accelerator: Any
    tracker: Any
    resolved: dict[str, Any]
    config: str | None
    overrides: Sequence[str]
    quiet: bool
    begin: float
    start: dict[str, Any] = field(default_factory=dict)  # from start_folder
    experiment: Any = None


def train(config: str | None = None, overrides: Sequence[str] = (), quiet: bool = False) -> dict[str, Any]:
    """Train one experiment from a config file and write its outputs (what ``distlearn train`` does).

    Args:
        config: A YAML file or a shipped config's name; None for the digits config.
        overrides: ``key.path=value`` strings.
        quiet: No per-epoch lines and no progress bars.

    Returns:
        The learner's training record (on every rank).

    Raises:
        RunError: Invalid config, missing file, unusable output folder, a launch the
            Accelerator cannot serve, or a training run that failed (non-finite loss).
    """
    begin = time.time()
    cfg = _load_config(config, overrides)
    from omegaconf import OmegaConf

    from .run_folder import remove_if_unused
    from .tracking import accelerator_kwargs, make_tracker

    resolved = OmegaConf.to_container(cfg, resolve=True)
    tracking = resolved["run"]["tracking"]
    accelerator = build_run_accelerator(resolved, accelerator_kwargs(tracking))  # log_with: the same on every rank
    tracker = make_tracker(tracking, accelerator.is_main_process)  # W&B on the main process, a no-op elsewhere
    setup_logging(accelerator.is_main_process, quiet)
    session = _Session(accelerator, tracker, resolved, config, overrides, quiet, begin)
    together = True  # every rank ends on the same path (see close)
    try:
        return _run(session, follows_epochs(cfg))
    except BaseException as exc:
        # decided on every rank together: a RunError they agreed on, or an error the others heard of
        together = (isinstance(exc, RunError) and exc.together) or getattr(exc, "every_rank_knows", False)
        tracker.finish(exit_code=1)  # W&B marks the run failed; its files closed before the folder is looked at
        if session.start.get("created") and accelerator.is_main_process:  # a failed start leaves no empty run folder
            remove_if_unused(session.start["output_dir"])
        raise
    finally:
        tracker.finish()
        close(accelerator, together)
        if accelerator.num_processes > 1:  # freed by exit_now, never by gloo's destructors (see there)
            FINISHED_GROUP.extend([accelerator, session.experiment])


def _load_config(config: str | None, overrides: Sequence[str]) -> Any:
    """The checked config: everything about it is checked before any process group or data exists."""
    from ..experiment.config import ConfigError, load_config, validate_config

    try:
        cfg = load_config(config, overrides)
        validate_config(cfg)
    except ConfigError as exc:
        raise RunError(str(exc)) from None  # each problem names its key, and a bad override itself
    except FileNotFoundError as exc:
        raise RunError(str(exc)) from None
    return cfg


def _run(session: _Session, follows: Sequence[str]) -> dict[str, Any]:
    """The folder, the experiment, W&B, training and the outputs, on every rank."""
    from ..training.checkpoint import Interrupted

    from .run_folder import signals_wait

    accelerator, resolved = session.accelerator, session.resolved
    configured = resolved["run"]["output_dir"]  # as written: the main process may fill in the default folder
    session.start = on_main(accelerator, "output folder", start_folder, resolved, session.config, follows)
    output_dir = shared_folder(accelerator, configured, session.start["output_dir"])  # refused unless all ranks see it
    resolved["run"]["output_dir"] = str(output_dir)
    for line in session.start["log"] if accelerator.is_main_process else ():  # once, not once per process
        logger.warning("%s", line)  # a resumed run's first line says from where (shown with --quiet too)
    if session.start.get("complete") is not None:
        if accelerator.is_main_process:
            say_complete(output_dir, session.start["complete"], resolved["run"]["overwrite"])
        return session.start["complete"]
    session.experiment = _build(resolved, accelerator)  # before W&B: bad data makes no empty W&B run
    everywhere(accelerator, "starting W&B tracking", session.tracker.start,
               accelerator, {**resolved, "launch": _launch_info(accelerator)}, output_dir, session.start["wandb_run_id"])
    checkpoints = _checkpoints(session, output_dir)
    with signals_wait() as held:  # from the end of training until the outputs are whole, a stop signal waits
        try:
            with checkpoints.catch_signals():
                record = _fit(session.experiment, session.tracker, checkpoints,
                              disable_tqdm=session.quiet or not sys.stderr.isatty(), output_dir=output_dir)
        except Interrupted as stopped:  # every rank: a checkpoint is saved; write what there is and say how to go on
            _stop(session, output_dir, stopped)
        record["status"] = "completed"
        files = _write_outputs(session, output_dir, record)
    session.tracker.summarize(record)
    session.tracker.finish()  # before the summary, so that W&B's closing lines come first and ours last
    if accelerator.is_main_process:
        print(_summary(session, output_dir, record, files), flush=True)
    if held:
        _stopped_after_outputs(held[0])
    return record


def _build(resolved: dict[str, Any], accelerator: Any) -> Any:
    """The experiment's data, model, learner and metric (the config is validated); bad data files are input errors."""
    from ..experiment.config import ConfigError, build_experiment

    cfg = copy.deepcopy(resolved)
    params = cfg["learner_configs"].get("learner_parameters") or {}
    params.pop("accelerator_kwargs", None)  # went into the Accelerator, which the learner gets instead
    try:
        return build_experiment(cfg, validated=True, accelerator=accelerator)
    except ConfigError as exc:
        raise RunError(str(exc)) from None
    except (ValueError, OSError) as exc:  # e.g. a CSV file with a missing column (the same on every rank)
        raise RunError(f"building the experiment failed: {exc}") from None


def _launch_info(accelerator: Any) -> dict[str, Any]:
    """How this run was launched, for the tracked config."""
    return {
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
    }


def _checkpoints(session: _Session, output_dir: Path) -> Any:
    """The run's checkpoints, resuming from the one :func:`start_folder` chose."""
    from ..training.checkpoint import Checkpoints

    run = session.resolved["run"]
    settings = run["checkpoint"]
    return Checkpoints(
        output_dir, every_n_steps=settings.get("every_n_steps"), keep_last=settings.get("keep_last", DEFAULT_KEEP_LAST),
        resume_from=session.start["resume_from"], meta={"config": session.resolved},
        extra={"wandb_run_id": session.tracker.run_id}, resume_batch=run.get("resume_batch", DEFAULT_RESUME_BATCH),
        every_n_minutes=settings.get("every_n_minutes"), asynchronous=settings.get("async", False),
    )


def _fit(experiment: Any, tracker: Any, checkpoints: Any, disable_tqdm: bool, output_dir: Path) -> dict[str, Any]:
    """``learner.train`` with per-epoch tracking; a refused first batch or a non-finite loss ends the command
    without a traceback."""
    from ..experiment.selection_config import selection_of
    from ..training.batches import BatchError
    from ..training.learner import NonFiniteLossError
    from ..training.model_options import ModelOptionsError
    from ..training.throughput import Monitor

    try:
        return experiment.learner.train(
            experiment.model,
            experiment.data_loaders,
            metric=experiment.metric,
            disable_tqdm=disable_tqdm,
            on_epoch_end=tracker.log_epoch,
            checkpoints=checkpoints,
            nonfinite=experiment.run["nonfinite"],
            display_step=experiment.run["display_step"],
            selection=selection_of(experiment.run, output_dir),
            monitor=Monitor(peak_tflops=experiment.run.get("peak_tflops"), on_running_loss=tracker.log_step),
        )
    except BatchError as exc:  # found before training on it, on every rank together: an input error (exit 2)
        raise RunError(f"the data does not fit the model or learner: {exc}") from None
    except ModelOptionsError as exc:  # compile / checkpointing the model cannot do, before the first step (exit 2)
        raise RunError(str(exc)) from None
    except NonFiniteLossError as exc:
        raise RunError(f"training failed: {exc}", EXIT_TRAINING_FAILED) from None
    except RuntimeError as exc:  # gloo and NCCL report a collective's timeout as a RuntimeError
        failure = _collective_failure(exc, experiment)
        if failure is None:
            raise
        raise failure from None


def _collective_failure(exc: RuntimeError, experiment: Any) -> RunError | None:
    """The error for a collective that failed in training (a peer that ended or never arrived), else None."""
    text = str(exc)
    learner = experiment.learner
    where = (f"rank {launch.rank()} of {launch.launched_world_size()}, in epoch {learner.epoch + 1} "
             f"after optimizer step {learner.step}")
    if "connection closed by peer" in text.lower() or "connection reset" in text.lower():
        return RunError(f"training stopped on {where}: another process ended while this one waited for it in a "
                        f"collective ({text.strip().splitlines()[0]}); its log says why. Rerun the same command to "
                        "resume from the newest checkpoint.", EXIT_TRAINING_FAILED, together=False)
    if "timed out" not in text.lower() and "timeout" not in text.lower():
        return None
    return RunError(
        f"training stopped on {where}: another process did not arrive within run.timeout_s={experiment.run['timeout_s']} s "
        f"while this one waited for it in a collective ({text.strip().splitlines()[0]}). A process died, hangs, "
        "or was started with another WORLD_SIZE: see every rank's log. A longer run.timeout_s helps only when a "
        "process is merely slow (e.g. a large checkpoint on a slow disk).",
        EXIT_TRAINING_FAILED, together=False,
    )


def _higher_is_better(experiment: Any) -> bool | None:
    """The metric's own direction, for the summary and curves.png alike (None: no metric)."""
    return getattr(experiment.metric, "higher_is_better", None)


def _write_outputs(session: _Session, output_dir: Path, record: dict[str, Any]) -> list[Path]:
    """The output set (config.yaml, record.json, batches.jsonl, the weights, curves.png), written by the main process.

    The weights are gathered through the prepared model (under FSDP the user's module holds a
    shard), under FSDP2 a tensor at a time while the main process writes them: collectives, so
    every rank calls this.
    """
    from ..training.full_weights import model_weights, written_by_main
    from .run_folder import write_outputs

    accelerator, experiment = session.accelerator, session.experiment
    source = model_weights(accelerator, experiment.learner.prepared_model or experiment.model)
    if not accelerator.is_main_process:
        source.finish()  # the gathers, in step with the main process's writing
    return on_main(accelerator, "writing the outputs", written_by_main, source, write_outputs, output_dir,
                   session.resolved, record, source, _higher_is_better(experiment))


def _summary(session: _Session, output_dir: Path, record: dict[str, Any], files: list[Path]) -> str:
    from .summary import summary_text

    return summary_text(
        record,
        output_dir=output_dir,
        title=run_title(session.experiment, session.accelerator, session.config),
        files=files,
        tracking=session.tracker.describe(),
        wall_time=time.time() - session.begin,
        higher_is_better=_higher_is_better(session.experiment),
    )


def _stopped_after_outputs(signum: int) -> None:
    """A stop signal that came while the outputs of a finished run were written: exit as a stop would."""
    import signal

    name = signal.Signals(signum).name
    raise Stopped(f"{name} came while the outputs were written: they were written whole and the run is complete "
                  f"(\"status\": \"completed\"); nothing is left to resume", 130 if signum == signal.SIGINT else 143)


def _stop(session: _Session, output_dir: Path, stopped: Any) -> None:
    """After a stop signal: write the partial outputs (status "interrupted"), close W&B, raise the exit."""
    import signal

    _write_outputs(session, output_dir, {**stopped.record, "status": "interrupted"})
    session.tracker.finish()
    name = signal.Signals(stopped.signum).name
    where = f"checkpoint {stopped.checkpoint}" if stopped.checkpoint else "no checkpoint"
    args = ["train", *([session.config] if session.config else []), *session.overrides]
    if not any(o.startswith("run.output_dir=") for o in session.overrides):
        args.append(f"run.output_dir={output_dir}")
    raise Stopped(
        f"interrupted by {name}: {where} saved; {resume_hint(args, session.accelerator.num_processes)}",
        130 if stopped.signum == signal.SIGINT else 143,
    )
