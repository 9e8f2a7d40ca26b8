"""The ``distlearn`` command: ``distlearn train [CONFIG] [key.path=value ...]``.

Parse, build, train, close. The same command runs alone or under a launcher,
unchanged::

    distlearn train                                    # the digits MLP, one process
    distlearn train configs/wine.yaml run.seed=3
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m distlearn train
    torchrun --nproc_per_node 2 -m distlearn train configs/digits.yaml
    launch/train.sh configs/digits.yaml                # picks the processes from the machine

Every rank runs every step (the collectives need them all); only the main
process touches files, the W&B run and the terminal. Bad input (an invalid
config, a missing file, an output folder holding an earlier run) ends the
command on every rank with exit code 2 and a one-paragraph message, before
any training.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["main", "train"]

logger = logging.getLogger("distlearn")

EXIT_BAD_INPUT = 2  # as argparse: the command cannot run as given
EXIT_TRAINING_FAILED = 1
T = TypeVar("T")


class RunError(Exception):
    """A problem with the user's input or launch: reported as a message, without a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``distlearn`` command; returns the process exit code.

    Args:
        argv: The arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        0 on success, 2 for bad input, 1 when training failed (e.g. a NaN loss).
    """
    args = _parser().parse_args(argv)
    from .launch_check import single_process_launch_warning

    if (warning := single_process_launch_warning()) is not None:
        print(f"distlearn: warning: {warning}", file=sys.stderr, flush=True)
    if args.config is not None and "=" in args.config and not Path(args.config).exists():
        args.overrides.insert(0, args.config)  # `distlearn train run.seed=3`: an override, not a file
        args.config = None
    try:
        train(args.config, args.overrides, quiet=args.quiet)
    except RunError as exc:
        _error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    return 0


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
    from .config import ConfigError, load_config, validate_config

    begin = time.time()
    try:  # everything about the config is checked before any process group or data exists
        cfg = load_config(config, overrides)
        validate_config(cfg)
    except ConfigError as exc:
        raise RunError(f"{exc}\n(config: {config or 'the default digits config'}; overrides: {list(overrides)})") from None
    except FileNotFoundError as exc:
        raise RunError(str(exc)) from None

    from omegaconf import OmegaConf

    from . import report
    from .tracking import Tracker

    resolved = OmegaConf.to_container(cfg, resolve=True)
    run = resolved["run"]
    tracker = Tracker(run["tracking"])  # decided before the Accelerator, which needs log_with
    accelerator = _build_accelerator(resolved, tracker)
    _setup_logging(accelerator.is_main_process, quiet)
    try:
        output_dir = _on_main(
            accelerator, "output folder", report.prepare_output_dir, run["output_dir"], run["overwrite"], config
        )
        run["output_dir"] = str(output_dir)
        experiment = _build(resolved, accelerator)  # before W&B: bad data makes no empty W&B run
        _everywhere(accelerator, "starting W&B tracking", tracker.start,
                    accelerator, {**resolved, "launch": _launch_info(accelerator)}, output_dir)
        record = _fit(experiment, tracker, disable_tqdm=quiet or not sys.stderr.isatty())
        state_dict = accelerator.get_state_dict(experiment.model)  # a collective under FSDP: every rank
        files = _on_main(
            accelerator, "writing the outputs", report.write_outputs, output_dir, resolved, record, state_dict
        )
        tracker.finish()  # before the summary, so that W&B's closing lines come first and ours last
        if accelerator.is_main_process:
            summary = report.summary_text(
                record,
                output_dir=output_dir,
                title=_title(experiment, accelerator, config),
                files=files,
                tracking=tracker.describe(),
                wall_time=time.time() - begin,
                higher_is_better=getattr(experiment.metric, "higher_is_better", None),
            )
            print(summary, flush=True)
        return record
    finally:
        tracker.finish()
        accelerator.end_training()


# --------------------------------------------------------------------------- steps


def _build_accelerator(resolved: dict[str, Any], tracker: Any) -> Any:
    """The Accelerator of this launch, with the learner's precision, accumulation and data seed."""
    from .accelerator import build_accelerator

    params = resolved["learner_configs"].get("learner_parameters") or {}
    seed = params.get("seed")
    kwargs = dict(params.get("accelerator_kwargs") or {})
    kwargs.update(tracker.accelerator_kwargs())
    try:
        return build_accelerator(
            # the config's value wins over the launcher's, as in Accelerate; null: the launcher's
            mixed_precision=params.get("mixed_precision"),
            gradient_accumulation_steps=params.get("gradient_accumulation_steps") or 1,
            seed=resolved["run"]["seed"] if seed is None else seed,
            **kwargs,
        )
    except (ValueError, RuntimeError) as exc:  # fp16 on CPU, the CPU trap: the launch is wrong, not the code
        raise RunError(f"cannot start training in this launch: {exc}") from None


def _build(resolved: dict[str, Any], accelerator: Any) -> Any:
    """The experiment's data, model, learner and metric (the config is validated); bad data files are input errors."""
    from .config import ConfigError, build_experiment

    cfg = copy.deepcopy(resolved)
    params = cfg["learner_configs"].get("learner_parameters") or {}
    params.pop("accelerator_kwargs", None)  # went into the Accelerator, which the learner gets instead
    try:
        return build_experiment(cfg, validated=True, accelerator=accelerator)
    except ConfigError as exc:
        raise RunError(str(exc)) from None
    except (ValueError, OSError) as exc:  # e.g. a CSV file with a missing column (the same on every rank)
        raise RunError(f"building the experiment failed: {exc}") from None


def _fit(experiment: Any, tracker: Any, disable_tqdm: bool) -> dict[str, Any]:
    """``learner.train`` with per-epoch tracking; a non-finite loss ends the command without a traceback."""
    from .learner import NonFiniteLossError

    try:
        return experiment.learner.train(
            experiment.model,
            experiment.data_loaders,
            metric=experiment.metric,
            disable_tqdm=disable_tqdm,
            on_epoch_end=tracker.log_epoch,
        )
    except NonFiniteLossError as exc:
        raise RunError(f"training failed: {exc}", EXIT_TRAINING_FAILED) from None


def _on_main(accelerator: Any, what: str, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` on the main process only and give its result, or its failure, to every rank.

    The one place where ranks differ in side effects: the main process does the
    work while the others wait in a broadcast, so an error there ends every rank
    instead of leaving the others waiting in their next collective.
    """
    outcome: list[Any] = [("ok", None)]
    error = None
    if accelerator.is_main_process:
        try:
            outcome[0] = ("ok", fn(*args))
        except Exception as exc:
            error = exc
            outcome[0] = ("error", f"{what}: {exc}")
    outcome = _from_main(accelerator, outcome)
    if outcome[0][0] == "error":
        if error is not None and not isinstance(error, (OSError, ValueError)):
            raise error  # not an input problem: keep the traceback (the other ranks exit with the message)
        raise RunError(outcome[0][1])
    return outcome[0][1]


def _everywhere(accelerator: Any, what: str, fn: Callable[..., Any], *args: Any) -> None:
    """Call ``fn`` on every rank; when it fails on the main process, fail on every rank."""
    message: list[Any] = [None]
    try:
        fn(*args)
    except Exception as exc:  # wandb raises its own error classes
        if not accelerator.is_main_process:
            raise
        message[0] = f"{what}: {type(exc).__name__}: {exc}"
    message = _from_main(accelerator, message)
    if message[0]:
        raise RunError(
            f"{message[0]}. Set WANDB_MODE=offline (no network needed) or run.tracking.backend=none to train without it."
        )


def _from_main(accelerator: Any, objects: list[Any]) -> list[Any]:
    """The main process's ``objects`` on every rank (a collective when there are several)."""
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(objects, from_process=0)
    return objects


# --------------------------------------------------------------------------- presentation


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distlearn", description="Distributed training from YAML configs.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"distlearn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train_cmd = commands.add_parser(
        "train",
        help="train an experiment from a config",
        description=(
            "Train an experiment: CONFIG is a YAML file or a shipped config's name (default: digits); "
            "key.path=value arguments override its values, e.g. learner_configs.learner_parameters.n_epochs=5 "
            "run.output_dir=runs/try1 run.tracking.backend=none. Writes config.yaml, record.json, "
            "model.safetensors and curves.png to run.output_dir (default runs/<config>-<time>)."
        ),
    )
    train_cmd.add_argument("config", nargs="?", default=None, help="YAML config file or shipped config name")
    train_cmd.add_argument("overrides", nargs="*", default=[], help="key.path=value overrides")
    train_cmd.add_argument("-q", "--quiet", action="store_true", help="no per-epoch lines or progress bars")
    return parser


def _setup_logging(is_main: bool, quiet: bool) -> None:
    """distlearn's log lines (one per epoch) on stderr, from the main process only."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main and not quiet else logging.WARNING)


def _launch_info(accelerator: Any) -> dict[str, Any]:
    return {
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
    }


def _title(experiment: Any, accelerator: Any, config: str | None) -> str:
    name = Path(config).stem if config else "digits"
    n_params = sum(p.numel() for p in experiment.model.parameters())
    procs = accelerator.num_processes
    return (
        f"{name}: {type(experiment.model).__name__} ({n_params:,} parameters), "
        f"{procs} process{'es' if procs != 1 else ''} on {accelerator.device.type}"
    )


def _error(message: str) -> None:
    """One message for the user, from one process (the others exit with the same code, silently)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"distlearn: error: {message}", file=sys.stderr, flush=True)
