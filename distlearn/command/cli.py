"""The ``distlearn`` command: ``distlearn train [CONFIG] [key.path=value ...]``; ``distlearn evaluate RUN_DIR`` and
``distlearn predict RUN_DIR --output FILE`` (:mod:`.inference`) run a saved run's weights on its test data;
``distlearn export RUN_DIR`` (:mod:`.export`) writes them as plain safetensors.

Parse, build, train, close. The same command runs alone or under a launcher,
unchanged::

    distlearn train                                    # the digits MLP, one process
    distlearn train configs/wine.yaml run.seed=3
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m distlearn train
    torchrun --nproc_per_node 2 -m distlearn train configs/digits.yaml
    launch/train.sh configs/digits.yaml                # picks the processes from the machine

Every rank runs every step (the collectives need them all); only the main
process touches files, the W&B run and the terminal. Bad input (an invalid
config, a missing file, an output folder holding an earlier run, a checkpoint
of another experiment) ends the command on every rank with exit code 2 and a
one-paragraph message, before any training.

The same command run again with the same ``run.output_dir`` continues the run
from its newest complete checkpoint (``run.resume: auto``). SIGTERM, SIGINT or
SIGUSR1 on any rank stops every rank at a checkpoint, writes the partial outputs
and exits 143 (130 for SIGINT) with the command that resumes.

Nothing here imports torch: ``--help``, ``--version`` and config errors answer without it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..runtime import launch
from .console import error, say, warn
from .errors import RunError, Stopped
from .export import export_run
from .group import FINISHED_GROUP, exit_now
from .inference import evaluate_run, predict_run
from .train_command import train

__all__ = ["main", "train"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``distlearn`` command; returns the process exit code.

    Args:
        argv: The arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        0 on success (also for a rerun of a finished run, which trains nothing), 2 for bad input,
        1 when training failed (e.g. a NaN loss, a process that never arrived), 143 / 130 when
        stopped by SIGTERM or SIGUSR1 / SIGINT (0 under the launch scripts, which exit with it:
        see ``stop_code``).
    """
    args = parse(sys.argv[1:] if argv is None else list(argv))
    launch.warn_single_process_launch(warn)
    try:
        _dispatch(args)
        code = 0
    except Stopped as exc:
        say(str(exc))
        code = stop_code(exc.exit_code)
    except RunError as exc:
        if exc.every_rank:  # a rank's own finding: rank 0 may not know it, or may never have started
            print(f"distlearn: error: {exc}", file=sys.stderr, flush=True)
        else:
            error(str(exc))
        code = exc.exit_code
    except KeyboardInterrupt:  # before the stop handlers were installed
        say("interrupted by SIGINT before training started")
        code = stop_code(130)
    if FINISHED_GROUP:
        exit_now(code)
    return code


def _dispatch(args: argparse.Namespace) -> None:
    """Run the command ``args`` names."""
    if args.command == "evaluate":
        evaluate_run(args.run_dir, args.checkpoint, args.overrides, quiet=args.quiet)
    elif args.command == "export":
        export_run(args.run_dir, args.checkpoint, args.output, args.max_shard_size, overwrite=args.overwrite,
                   quiet=args.quiet)
    elif args.command == "predict":
        predict_run(args.run_dir, args.output, args.checkpoint, args.overrides, overwrite=args.overwrite,
                    quiet=args.quiet)
    else:
        train(args.config, args.overrides, quiet=args.quiet)


def stop_code(code: int) -> int:
    """The exit code of a stop: ``code`` (143, 130), or 0 under the launch scripts, which exit with it.

    Under ``launch/*.sh`` (``DISTLEARN_EXIT_CODE_FILE`` set), a worker that exits non-zero makes the
    launcher print a traceback, end with 1 and, with torchrun's restarts, start the run again. So
    the workers exit 0 and the first process of each machine leaves the code in the file for the
    script to exit with.
    """
    path = launch.exit_code_file()
    if not path:
        return code
    if launch.local_rank() in (None, 0):
        try:
            Path(path).write_text(f"{code}\n")
        except OSError as exc:
            warn(f"cannot write the exit code to {path}: {exc}")
            return code
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line; options may come anywhere among the overrides (``train wine k=v -q k2=v2``).

    argparse's intermixed parsing does not take subcommands, so the ``train`` subcommand's own
    parser reads what follows ``train``; everything else (``--help``, ``--version``, a bad command)
    goes through the top-level parser. A first argument with ``=`` that is no file is an override
    (``distlearn train run.seed=3``).
    """
    parser, subparsers = _parsers()
    if not argv or argv[0] not in subparsers:
        return parser.parse_args(argv)
    args = subparsers[argv[0]].parse_intermixed_args(argv[1:])
    args.command = argv[0]
    if args.command != "train":
        return args
    if args.config is not None and "=" in args.config and not Path(args.config).exists():
        args.overrides.insert(0, args.config)
        args.config = None
    return args


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and its subcommands' (``train``, ``evaluate``, ``predict``)."""
    from .. import __version__

    parser = argparse.ArgumentParser(prog="distlearn", description="Distributed training from YAML configs.")
    parser.add_argument("--version", action="version", version=f"distlearn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train_parser = commands.add_parser(
        "train",
        help="train an experiment from a config",
        description=(
            "Train an experiment: CONFIG is a YAML file or a shipped config's name (default: digits); "
            "key.path=value arguments override its values, e.g. learner_configs.learner_parameters.n_epochs=5 "
            "run.output_dir=runs/try1 run.tracking.backend=none. Writes config.yaml, record.json, batches.jsonl, "
            "model.safetensors and curves.png to run.output_dir (default runs/<config>-<time>)."
        ),
    )
    train_parser.add_argument("config", nargs="?", default=None, help="YAML config file or shipped config name")
    train_parser.add_argument("overrides", nargs="*", default=[], help="key.path=value overrides")
    train_parser.add_argument("-q", "--quiet", action="store_true", help="no per-epoch lines or progress bars")
    return parser, {"train": train_parser, **_inference_parsers(commands), "export": _export_parser(commands)}


def _inference_parsers(commands: Any) -> dict[str, argparse.ArgumentParser]:
    """``evaluate`` and ``predict``: a run folder, the weights, overrides (and predict's output file)."""
    about = {
        "evaluate": ("compute the test loss and metrics of a finished run's weights",
                     "Evaluate a run: rebuild RUN_DIR's config (with key.path=value overrides, e.g. other data of the "
                     "same shape), load its weights and compute the test loss and every metric. Prints them, writes "
                     "RUN_DIR/eval-<checkpoint>.json and, when the run was tracked, adds them to its W&B summary."),
        "predict": ("write one prediction per test sample of a finished run",
                    "Predict with a run: one row per test sample in dataset order (index, target, prediction, "
                    "scores; for token labels one row per target token: row, position, target, prediction), "
                    "as CSV or .npy (a structured array) by the suffix of --output."),
    }
    parsers = {}
    for name, (short, long) in about.items():
        sub = commands.add_parser(name, help=short, description=long)
        sub.add_argument("run_dir", metavar="RUN_DIR", help="the folder `distlearn train` wrote")
        sub.add_argument("overrides", nargs="*", default=[], help="key.path=value overrides of the run's config")
        sub.add_argument("--checkpoint", default="last", metavar="best|last|PATH",
                         help="the weights: last (default: the final ones, or the newest checkpoint of a run that "
                              "did not finish), best (run.checkpoint.keep_best), or a folder under RUN_DIR/checkpoints/")
        if name == "predict":
            sub.add_argument("--output", required=True, metavar="FILE", help="the file to write (.csv or .npy)")
            sub.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
        sub.add_argument("-q", "--quiet", action="store_true", help="no log lines")
        parsers[name] = sub
    return parsers


def _export_parser(commands: Any) -> argparse.ArgumentParser:
    """``export``: a run folder, the weights, the output folder and the shard size."""
    sub = commands.add_parser(
        "export", help="write a run's weights (any checkpoint, sharded or not) as plain safetensors",
        description=("Export a run's weights: gather the chosen weights (a sharded FSDP checkpoint too, on one "
                     "process) into model.safetensors, or above --max-shard-size into HF-style shards "
                     "model-0000k-of-0000n.safetensors with model.safetensors.index.json, loadable without distlearn."))
    sub.add_argument("run_dir", metavar="RUN_DIR", help="the folder `distlearn train` wrote")
    sub.add_argument("--checkpoint", default="last", metavar="best|last|PATH",
                     help="the weights: last (default), best, or a folder under RUN_DIR/checkpoints/")
    sub.add_argument("--output", default=None, metavar="DIR", help="the folder to write (default RUN_DIR/export-<checkpoint>)")
    sub.add_argument("--max-shard-size", default=None, metavar="SIZE",
                     help="split above this size, e.g. 5GB (default), 500MB, 2GiB or a number of bytes")
    sub.add_argument("--overwrite", action="store_true", help="replace the weights DIR holds already")
    sub.add_argument("-q", "--quiet", action="store_true", help="no log lines")
    return sub
