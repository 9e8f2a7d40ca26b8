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
config, a missing file, an output folder holding an earlier run, a checkpoint
of another experiment) ends the command on every rank with exit code 2 and a
one-paragraph message, before any training.

The same command run again with the same ``run.output_dir`` continues the run
from its newest complete checkpoint (``run.resume: auto``). SIGTERM, SIGINT or
SIGUSR1 on any rank stops every rank at a checkpoint, writes the partial outputs
and exits 143 (130 for SIGINT) with the command that resumes.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from ..options import DEFAULT_KEEP_LAST, DEFAULT_RESUME_BATCH
from ..runtime import ranks

__all__ = ["main", "train"]

logger = logging.getLogger("distlearn")

EXIT_BAD_INPUT = 2  # as argparse: the command cannot run as given
EXIT_TRAINING_FAILED = 1
T = TypeVar("T")


class RunError(Exception):
    """A problem with the user's input or launch: reported as a message, without a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT, together: bool = True) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.together = together  # every rank raises it at the same point (else nobody waits at the end)


class Stopped(RunError):
    """The run stopped on a signal, as asked, after its checkpoint: reported without "error"."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``distlearn`` command; returns the process exit code.

    Args:
        argv: The arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        0 on success (also for a rerun of a finished run, which trains nothing), 2 for bad input,
        1 when training failed (e.g. a NaN loss, a process that never arrived), 143 / 130 when
        stopped by SIGTERM or SIGUSR1 / SIGINT (0 under the launch scripts, which exit with it:
        see ``_stop_code``).
    """
    args = _parse(sys.argv[1:] if argv is None else list(argv))
    from ..runtime.launch import warn_single_process_launch

    warn_single_process_launch(lambda warning: print(f"distlearn: warning: {warning}", file=sys.stderr, flush=True))
    if args.config is not None and "=" in args.config and not Path(args.config).exists():
        args.overrides.insert(0, args.config)  # `distlearn train run.seed=3`: an override, not a file
        args.config = None
    try:
        train(args.config, args.overrides, quiet=args.quiet)
        code = 0
    except Stopped as exc:
        _say(str(exc))
        code = _stop_code(exc.exit_code)
    except RunError as exc:
        _error(str(exc))
        code = exc.exit_code
    except KeyboardInterrupt:  # before the stop handlers were installed
        _say("interrupted by SIGINT before training started")
        code = _stop_code(130)
    if _FINISHED_GROUP:
        _exit_now(code)
    return code


def _stop_code(code: int) -> int:
    """The exit code of a stop: ``code`` (143, 130), or 0 under the launch scripts, which exit with it.

    Under ``launch/*.sh`` (``DISTLEARN_EXIT_CODE_FILE`` set), a worker that exits non-zero makes the
    launcher print a traceback, end with 1 and, with torchrun's restarts, start the run again. So
    the workers exit 0 and the first process of each machine leaves the code in the file for the
    script to exit with.
    """
    path = os.environ.get("DISTLEARN_EXIT_CODE_FILE")
    if not path:
        return code
    if os.environ.get("LOCAL_RANK", "0") == "0":
        try:
            Path(path).write_text(f"{code}\n")
        except OSError as exc:
            print(f"distlearn: warning: cannot write the exit code to {path}: {exc}", file=sys.stderr, flush=True)
            return code
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
    from ..experiment.config import ConfigError, load_config, validate_config

    begin = time.time()
    try:  # everything about the config is checked before any process group or data exists
        cfg = load_config(config, overrides)
        validate_config(cfg)
    except ConfigError as exc:
        raise RunError(str(exc)) from None  # each problem names its key, and a bad override itself
    except FileNotFoundError as exc:
        raise RunError(str(exc)) from None

    from omegaconf import OmegaConf

    from . import report
    from ..training.checkpoint import Interrupted
    from .tracking import accelerator_kwargs, make_tracker

    resolved = OmegaConf.to_container(cfg, resolve=True)
    run = resolved["run"]
    accelerator = _build_accelerator(resolved, accelerator_kwargs(run["tracking"]))  # log_with: the same on every rank
    tracker = make_tracker(run["tracking"], accelerator.is_main_process)  # W&B on the main process, a no-op elsewhere
    _setup_logging(accelerator.is_main_process, quiet)
    start: dict[str, Any] = {}
    experiment: Any = None
    together = True  # every rank ends on the same path (see _close)
    try:
        start = _on_main(accelerator, "output folder", _start_folder, resolved, config, _follows_epochs(cfg))
        output_dir = Path(start["output_dir"])
        run["output_dir"] = str(output_dir)
        if start.get("complete") is not None:
            if accelerator.is_main_process:
                _say_complete(output_dir, start["complete"], resolved)
            return start["complete"]
        for line in start["log"] if accelerator.is_main_process else ():  # once, not once per process
            logger.warning("%s", line)  # a resumed run's first line says from where (shown with --quiet too)
        experiment = _build(resolved, accelerator)  # before W&B: bad data makes no empty W&B run
        _everywhere(accelerator, "starting W&B tracking", tracker.start,
                    accelerator, {**resolved, "launch": _launch_info(accelerator)}, output_dir, start["wandb_run_id"])
        checkpoints = _checkpoints(run, output_dir, start["resume_from"], resolved, tracker)
        try:
            with checkpoints.catch_signals():
                record = _fit(experiment, tracker, checkpoints, disable_tqdm=quiet or not sys.stderr.isatty())
        except Interrupted as stopped:  # every rank: a checkpoint is saved; write what there is and say how to go on
            _stop(accelerator, experiment, tracker, output_dir, resolved, stopped, config, overrides)
        record["status"] = "completed"
        state_dict = _weights(accelerator, experiment)
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
    except BaseException as exc:
        # decided on every rank together: a RunError they agreed on, or an error the others heard of
        together = (isinstance(exc, RunError) and exc.together) or getattr(exc, "every_rank_knows", False)
        tracker.finish(exit_code=1)  # W&B marks the run failed; its files closed before the folder is looked at
        if start.get("created") and accelerator.is_main_process:  # a failed start leaves no empty run folder
            report.remove_if_unused(start["output_dir"])
        raise
    finally:
        tracker.finish()
        _close(accelerator, together)
        if accelerator.num_processes > 1:  # freed by _exit_now, never by gloo's destructors (see there)
            _FINISHED_GROUP.extend([accelerator, experiment])


# --------------------------------------------------------------------------- steps


def _build_accelerator(resolved: dict[str, Any], tracking_kwargs: dict[str, Any]) -> Any:
    """The Accelerator of this launch, with the learner's precision, accumulation and data seed, and
    ``tracking_kwargs`` (``log_with``)."""
    from accelerate.utils import InitProcessGroupKwargs

    from ..runtime.accelerator import build_accelerator

    params = resolved["learner_configs"].get("learner_parameters") or {}
    seed = params.get("seed")
    kwargs = dict(params.get("accelerator_kwargs") or {})
    kwargs.update(tracking_kwargs)
    # run.timeout_s bounds every collective: a rank that never arrives ends the run instead of a 30-minute wait
    kwargs["kwargs_handlers"] = [*kwargs.get("kwargs_handlers", []),
                                 InitProcessGroupKwargs(timeout=timedelta(seconds=resolved["run"]["timeout_s"]))]
    try:
        _join_restarted_group(resolved["run"]["timeout_s"])
    except Exception as exc:  # noqa: BLE001 - a group that cannot form is a launch failure, not bad input
        raise _group_failure(exc) from None
    try:
        return build_accelerator(
            # the config's value wins over the launcher's, as in Accelerate; null: the launcher's
            mixed_precision=params.get("mixed_precision"),
            gradient_accumulation_steps=params.get("gradient_accumulation_steps") or 1,
            seed=resolved["run"]["seed"] if seed is None else seed,
            **kwargs,
        )
    except (ValueError, RuntimeError) as exc:  # fp16 on CPU, the CPU trap: the launch is wrong, not the code
        if _is_group_failure(exc):  # peers that never answered (e.g. after a restart): not the user's input
            raise _group_failure(exc) from None
        if "fp16" in str(exc):  # say where the fp16 came from: the config's key, or the launcher
            key = "learner_configs.learner_parameters.mixed_precision"
            if params.get("mixed_precision") == "fp16":
                raise RunError(f"{key}: {exc} Set {key}=bf16 (or no).") from None
            raise RunError(
                f"{key} is null, so the launcher's precision applies, and it is fp16 (ACCELERATE_MIXED_PRECISION, "
                f"from accelerate launch --mixed_precision or MIXED_PRECISION for the launch scripts): {exc} Launch "
                f"with bf16 or no, or set {key}=bf16 (the config's value wins)."
            ) from None
        raise RunError(f"cannot start training in this launch: {exc}") from None


def _restart_count() -> int:
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)
    except ValueError:
        return 0


def _join_restarted_group(timeout_s: float) -> None:
    """After a torchrun restart, join the process group through a store prefix of this attempt's own.

    torchrun (c10d rendezvous) shares its rendezvous TCPStore with the workers
    (``TORCHELASTIC_USE_AGENT_STORE=True``) without a per-attempt prefix, so the
    workers of a restarted group can read the addresses the dead attempt left there
    and dial them ("Connection refused"). A group initialised here, through
    ``/distlearn/attempt_<n>/``, sees only this attempt's keys; Accelerate then uses
    it. (launch/torchrun.sh sets TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 instead: a
    fresh store per rendezvous round.)
    """
    import torch
    import torch.distributed as dist

    restart = _restart_count()
    if restart == 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or dist.is_initialized():
        return
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=timeout)
    gpu = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true", "yes")
    dist.init_process_group("nccl" if gpu else "gloo", store=dist.PrefixStore(f"/distlearn/attempt_{restart}", store),
                            rank=rank, world_size=world, timeout=timeout)
    logger.info("restart %d: joined the process group through this attempt's store prefix", restart)


def _is_group_failure(exc: BaseException) -> bool:
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, getattr(dist, "DistError", ())) or any(
        marker in text for marker in ("connectFullMesh", "Connection refused", "Connection reset", "timed out connecting")
    )


def _group_failure(exc: BaseException) -> RunError:
    """A process group that could not form: a failed launch (exit 1), which a launcher may restart."""
    restart = _restart_count()
    when = f" on restart {restart} of this launch" if restart else ""
    return RunError(
        f"the process group could not form{when}: {exc}. The other processes did not answer: check that every "
        "process of the launch is running and can reach the others (with torchrun, use --rdzv-backend c10d "
        "or --standalone, or launch/torchrun.sh).",
        exit_code=EXIT_TRAINING_FAILED, together=False,
    )


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


def _follows_epochs(cfg: Any) -> list[str]:
    """The keys whose value is interpolated from ``n_epochs`` (e.g. a cosine schedule's
    ``T_max: ${learner_configs.learner_parameters.n_epochs}``): they change with it."""
    from omegaconf import OmegaConf

    raw = _flatten(OmegaConf.to_container(cfg, resolve=False))
    return sorted(k for k, v in raw.items() if isinstance(v, str) and "${" in v and "n_epochs" in v)


def _start_folder(resolved: dict[str, Any], config: str | None, follows_epochs: Sequence[str] = ()) -> dict[str, Any]:
    """Main process: the output folder and the checkpoint the run continues from (``run.resume``).

    Returns:
        ``output_dir``, ``created`` (the folder is new), ``resume_from`` (a checkpoint folder
        or None), ``wandb_run_id`` (the resumed run's) and ``log``: lines for the log.

    Raises:
        ValueError: an unusable folder or checkpoint, or a checkpoint of another experiment.
    """
    from . import report

    run = resolved["run"]
    mode = run["resume"]
    if run["output_dir"] is None and mode != "none":
        launch = launch_identity()  # a restarted or requeued launch continues its own default folder
        if launch is not None:
            base = report.default_output_dir(config)
            run["output_dir"] = str(base.with_name(f"{base.name.rsplit('-', 2)[0]}-{launch}"))
    existed = run["output_dir"] is not None and Path(run["output_dir"]).expanduser().exists()
    output_dir = report.prepare_output_dir(run["output_dir"], run["overwrite"], config, resumable=mode != "none")
    try:
        return _resume_point(resolved, output_dir, created=not existed, follows_epochs=follows_epochs)
    except BaseException:
        if not existed:
            report.remove_if_unused(output_dir)
        raise


def launch_identity() -> str | None:
    """A name for this launch that stays the same when the launcher restarts or requeues it, or None.

    ``DISTLEARN_RUN_ID`` (launch/torchrun.sh sets it; launch/slurm.sbatch names the folder of its job
    itself, since every run of an allocation shares ``SLURM_JOB_ID``), else under torchrun (or ``accelerate launch``) the agent process's start time with torchrun's
    ``TORCHELASTIC_RUN_ID`` (a fresh id per ``--standalone`` launch) or, when that is ``none``, the
    agent's pid. None for a launch that cannot restart. On several nodes the agent of rank 0 can
    change between restarts: set DISTLEARN_RUN_ID (the same on every node) or run.output_dir.
    """
    if os.environ.get("DISTLEARN_RUN_ID", "").strip():
        return _safe_name(os.environ["DISTLEARN_RUN_ID"])
    if "TORCHELASTIC_RESTART_COUNT" not in os.environ:
        return None
    agent = os.getppid()  # the torchrun agent: it outlives the workers it restarts
    started = _process_start(agent)
    stamp = started.strftime("%Y%m%d-%H%M%S") + "-" if started is not None else ""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if run_id and run_id != "none":
        return stamp + _safe_name(run_id)[:8]
    return f"{stamp}{agent}"


def _process_start(pid: int) -> Any:
    """When process ``pid`` started (a datetime), from /proc; None where there is no /proc."""
    from datetime import datetime

    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text.strip())


def _resume_point(resolved: dict[str, Any], output_dir: Path, created: bool,
                  follows_epochs: Sequence[str] = ()) -> dict[str, Any]:
    from ..training import checkpoint

    run = resolved["run"]
    mode = run["resume"]
    out = {"output_dir": str(output_dir), "created": created, "resume_from": None, "wandb_run_id": None, "log": []}
    if mode == "none":
        if run["overwrite"]:  # a fresh run in an overwritten folder: the old run's checkpoints must not mix in
            shutil.rmtree(checkpoint.checkpoint_dir(output_dir), ignore_errors=True)
        return out
    if mode == "auto":
        found = checkpoint.latest(output_dir)
        if found is None:
            if _restart_count():
                out["log"].append(f"restart {_restart_count()} of this launch: no checkpoint yet in {output_dir}, "
                                  "starting from the beginning")
            return out
        path, meta = found
    else:
        path = Path(mode).expanduser()
        try:
            meta = checkpoint.check(path)
        except checkpoint.CheckpointError as exc:
            raise ValueError(f"run.resume={mode!r}: not a usable checkpoint: {exc}") from None
    from ..runtime.accelerator import launched_world_size

    world, saved_world = launched_world_size(), meta.get("world_size")
    if saved_world != world and run.get("resume_batch", DEFAULT_RESUME_BATCH) == "global":
        try:  # an elastic resume: the global batch must split over this launch's processes (checked before training)
            checkpoint.Checkpoints(output_dir, resume_from=path).per_process_batch(world, 1)
        except checkpoint.CheckpointError as exc:
            raise ValueError(f"cannot resume from {path} on {world} processes: {exc}") from None
    changed, conflicts = config_changes(meta.get("config") or {}, resolved)
    if conflicts:
        listed = "\n  - ".join(_conflict_line(c, changed, follows_epochs) for c in conflicts)
        raise ValueError(
            f"cannot resume from {path}: the experiment differs from the one it saved:\n  - {listed}\n"
            "Resume with the same config, start a new run (another run.output_dir), or set run.resume=none "
            "with run.overwrite=true to start over in this folder."
        )
    epoch, done = meta["epoch"], meta["batches_done"]
    complete = _completed_record(output_dir, resolved, epoch, done)
    if complete is not None:  # nothing left to train: no resume line, no W&B run, no training
        out["complete"] = complete
        return out
    progress = checkpoint.load_progress(path, 0)
    out["resume_from"] = str(path)
    out["wandb_run_id"] = (progress.get("extra") or {}).get("wandb_run_id")
    where = f"epoch {epoch + 1}, after batch {done}" if done else f"the start of epoch {epoch + 1}"
    again = f"restart {_restart_count()} of this launch: " if _restart_count() else ""
    out["log"].append(f"{again}resuming from checkpoint {path} ({where}, optimizer step {meta['step']})")
    if saved_world != world:
        policy = run.get("resume_batch", DEFAULT_RESUME_BATCH)
        out["log"].append(
            f"the checkpoint was written by {_processes(saved_world)}, this launch has {world}: "
            + (f"global batch {meta.get('global_batch')} kept (run.resume_batch: global)" if policy == "global"
               else "per-process batch kept, the global batch changes (run.resume_batch: per_process)")
        )
    out["log"] += [f"changed since the checkpoint: {key} {old!r} -> {new!r}" for key, old, new in changed]
    return out


EPOCHS_KEY = "learner_configs.learner_parameters.n_epochs"


def _processes(n: Any) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def _completed_record(output_dir: Path, resolved: dict[str, Any], epoch: int, done: int) -> dict[str, Any] | None:
    """The record of a finished run in ``output_dir`` when the checkpoint is past the last epoch, else None.

    A run that completed (``"status": "completed"`` in record.json) and is started again with the same
    ``n_epochs`` has nothing left to train: it is not resumed (a resume would open a new W&B run and
    rewrite the outputs for no epoch). A larger ``n_epochs`` resumes it.
    """
    import json

    n_epochs = (resolved["learner_configs"].get("learner_parameters") or {}).get("n_epochs")
    if done or not isinstance(n_epochs, int) or epoch < n_epochs:
        return None
    try:
        record = json.loads((output_dir / "record.json").read_text())
    except (OSError, ValueError):
        return None  # stopped after the last checkpoint, before its outputs: resuming writes them
    return record if isinstance(record, dict) and record.get("status") == "completed" else None


def _conflict_line(conflict: tuple, allowed: Sequence[tuple], follows_epochs: Sequence[str]) -> str:
    """One refused change; one that came with a change of n_epochs says so, and how to keep it."""
    key, old, new = conflict
    line = f"{key}: {old!r} in the checkpoint, {new!r} now"
    epochs = next(((o, n) for k, o, n in allowed if k == EPOCHS_KEY), None)
    if epochs is None or (key not in follows_epochs and (old, new) != epochs):
        return line
    why = "it is interpolated from n_epochs" if key in follows_epochs else "it changed with n_epochs"
    return (f"{line} ({why}, {epochs[0]!r} -> {epochs[1]!r}; n_epochs alone may change on resume). To run more "
            f"epochs with the saved value, pin it: {key}={old!r}, e.g. for a cosine schedule the lr then follows "
            f"the same curve past its end; or start a new run with {EPOCHS_KEY}={epochs[1]!r}")


# Config keys a resumed run may change: how long it runs, how it is tracked, checkpointed and shown.
RESUME_MAY_CHANGE = (
    "learner_configs.learner_parameters.n_epochs",
    "learner_configs.learner_parameters.display_every_n_steps",
    "run.output_dir", "run.overwrite", "run.resume", "run.tracking", "run.checkpoint", "run.timeout_s", "run.nonfinite",
    "run.resume_batch",
)


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[tuple], list[tuple]]:
    """The differences between a checkpoint's config and this run's, as (key, old, new) triples.

    Returns:
        ``(allowed, conflicts)``: changes a resumed run may make (``RESUME_MAY_CHANGE``), and the
        others (model, optimizer, data, loss, metric, seeds), which make resuming wrong.
    """
    a, b = _flatten(old), _flatten(new)
    allowed, conflicts = [], []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<unset>") == b.get(key, "<unset>"):
            continue
        change = (key, a.get(key, "<unset>"), b.get(key, "<unset>"))
        safe = any(key == k or key.startswith(k + ".") for k in RESUME_MAY_CHANGE)
        (allowed if safe else conflicts).append(change)
    return allowed, conflicts


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _checkpoints(run: dict[str, Any], output_dir: Path, resume_from: str | None, resolved: dict, tracker: Any) -> Any:
    from ..training.checkpoint import Checkpoints

    settings = run["checkpoint"]
    return Checkpoints(
        output_dir, every_n_steps=settings.get("every_n_steps"), keep_last=settings.get("keep_last", DEFAULT_KEEP_LAST),
        resume_from=resume_from, meta={"config": resolved}, extra={"wandb_run_id": tracker.run_id},
        resume_batch=run.get("resume_batch", DEFAULT_RESUME_BATCH),
    )


def _weights(accelerator: Any, experiment: Any) -> dict[str, Any]:
    """The full weights, through the prepared model: under FSDP the user's module holds a shard.
    A collective under FSDP: every rank calls it."""
    return accelerator.get_state_dict(experiment.learner.prepared_model or experiment.model)


def _stop(accelerator, experiment, tracker, output_dir, resolved, stopped, config, overrides) -> None:
    """After a stop signal: write the partial outputs (status "interrupted"), close W&B, raise the exit."""
    import signal

    from . import report

    record = {**stopped.record, "status": "interrupted"}
    state_dict = _weights(accelerator, experiment)
    _on_main(accelerator, "writing the outputs", report.write_outputs, output_dir, resolved, record, state_dict)
    tracker.finish()
    name = signal.Signals(stopped.signum).name
    where = f"checkpoint {stopped.checkpoint}" if stopped.checkpoint else "no checkpoint"
    args = ["train", *([config] if config else []), *overrides]
    if not any(o.startswith("run.output_dir=") for o in overrides):
        args.append(f"run.output_dir={output_dir}")
    raise Stopped(
        f"interrupted by {name}: {where} saved; {resume_hint(args, accelerator.num_processes)}",
        130 if stopped.signum == signal.SIGINT else 143,
    )


def resume_hint(args: Sequence[str], num_processes: int, environ: Mapping[str, str] | None = None) -> str:
    """How to resume: the command that continues the run, with the launch that started it.

    Args:
        args: ``distlearn`` arguments that continue the run (``train CONFIG ... run.output_dir=...``).
        num_processes: The processes of this launch.
        environ: The environment (default ``os.environ``): ``DISTLEARN_LAUNCH_COMMAND`` (set by
            the launch scripts), else whether torchrun or ``accelerate launch`` started the run.

    Returns:
        ``"resume with: <command>"``; a multi-process launch is never shown as a one-process command.
    """
    import shlex

    env = os.environ if environ is None else environ
    quoted = shlex.join(args)
    script = env.get("DISTLEARN_LAUNCH_COMMAND", "").strip()
    if script:  # e.g. "DISTLEARN_CPU_PROCS=2 launch/train.sh": the script takes the arguments after "train"
        return f"resume with: {script} {shlex.join(args[1:])}"
    if num_processes <= 1 and "TORCHELASTIC_RUN_ID" not in env:
        return f"resume with: distlearn {quoted}"
    launcher = "accelerate launch" if "ACCELERATE_MIXED_PRECISION" in env else "torchrun"
    return (f"resume with the same launch ({launcher}, {_processes(num_processes)}) "
            f"and the arguments: -m distlearn {quoted}")


# A multi-process run's objects once its group is closed. Freeing a DDP model after the group
# is destroyed runs gloo's ProcessGroup destructor, which joins its worker threads and, seen
# here after successful two-process runs, can block forever (or abort: "terminate called
# without an active exception"). Everything is written and flushed by then, so the command
# exits without running those destructors.
_FINISHED_GROUP: list[Any] = []


def _exit_now(code: int) -> None:
    """Flush every stream and end the process with ``code``, skipping interpreter teardown."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing left to flush
            pass
    os._exit(code)


def _close(accelerator: Any, together: bool) -> None:
    """End the run on every rank in order: trackers, a barrier, then the process group.

    A process that exits while gloo's threads still talk to a peer can abort with "terminate
    called without an active exception" (exit -6) after a successful run: Accelerate's
    ``end_training`` destroys the group at once, while another rank may still be writing
    the outputs. The barrier makes every rank arrive first. ``together``: all ranks are on
    the same path (success, or an error they agreed on); after an error on one rank only,
    nobody waits for the others.
    """
    import torch.distributed as dist

    if together and dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        except Exception as exc:  # a rank is gone: nothing left to wait for
            logger.debug("barrier before teardown failed: %s", exc)
    accelerator.end_training()  # finishes trackers, destroys the process group
    if dist.is_available() and dist.is_initialized():  # e.g. a fork launch, which Accelerate leaves alone
        dist.destroy_process_group()


def _fit(experiment: Any, tracker: Any, checkpoints: Any, disable_tqdm: bool) -> dict[str, Any]:
    """``learner.train`` with per-epoch tracking; a non-finite loss ends the command without a traceback."""
    from ..training.learner import NonFiniteLossError

    try:
        return experiment.learner.train(
            experiment.model,
            experiment.data_loaders,
            metric=experiment.metric,
            disable_tqdm=disable_tqdm,
            on_epoch_end=tracker.log_epoch,
            checkpoints=checkpoints,
            nonfinite=experiment.run["nonfinite"],
        )
    except NonFiniteLossError as exc:
        raise RunError(f"training failed: {exc}", EXIT_TRAINING_FAILED) from None
    except RuntimeError as exc:  # gloo and NCCL report a collective's timeout as a RuntimeError
        text = str(exc)
        learner = experiment.learner
        where = (f"rank {os.environ.get('RANK', '0')} of {os.environ.get('WORLD_SIZE', '1')}, in epoch {learner.epoch + 1} "
                 f"after optimizer step {learner.step}")
        if "connection closed by peer" in text.lower() or "connection reset" in text.lower():
            raise RunError(f"training stopped on {where}: another process ended while this one waited for it in a "
                           f"collective ({text.strip().splitlines()[0]}); its log says why. Rerun the same command to "
                           "resume from the newest checkpoint.", EXIT_TRAINING_FAILED, together=False) from None
        if "timed out" not in text.lower() and "timeout" not in text.lower():
            raise
        raise RunError(
            f"training stopped on {where}: another process did not arrive within run.timeout_s={experiment.run['timeout_s']} s "
            f"while this one waited for it in a collective ({text.strip().splitlines()[0]}). A process died, hangs, "
            "or was started with another WORLD_SIZE: see every rank's log. A longer run.timeout_s helps only when a "
            "process is merely slow (e.g. a large checkpoint on a slow disk).",
            EXIT_TRAINING_FAILED, together=False,
        ) from None


def _on_main(accelerator: Any, what: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on the main process only (files, folders), its result on every rank; a failure
    there ends every rank (see :func:`distlearn.ranks.on_main`).

    Raises:
        RunError: On every rank, for an ``OSError`` or ``ValueError`` (an input problem: a message).
        Exception: Any other error, re-raised with its traceback on the main process (the other
            ranks end with the RunError message).
    """
    try:
        return ranks.on_main(accelerator, fn, *args)
    except ranks.MainProcessFailed as exc:
        failed = exc
    if failed.error is not None and not isinstance(failed.error, (OSError, ValueError)):
        failed.error.every_rank_knows = True  # the others end with the message: the ranks stay on one path
        raise failed.error  # not an input problem: keep the traceback
    raise RunError(f"{what}: {failed.message}")


def _everywhere(accelerator: Any, what: str, fn: Callable[..., Any], *args: Any) -> None:
    """``fn(*args)`` on every rank (the W&B start: a no-op off the main process); when it fails on the
    main process, every rank ends with a RunError saying how to train without W&B."""
    try:
        ranks.everywhere(accelerator, fn, *args)
    except ranks.MainProcessFailed as exc:
        raise RunError(
            f"{what}: {exc.kind}: {exc.message}. Set WANDB_MODE=offline (no network needed) or "
            "run.tracking.backend=none to train without it."
        ) from None


# --------------------------------------------------------------------------- presentation


def _parse(argv: list[str]) -> argparse.Namespace:
    """The command line; options may come anywhere among the overrides (``train wine k=v -q k2=v2``).

    argparse's intermixed parsing does not take subcommands, so the ``train`` subcommand's own
    parser reads what follows ``train``; everything else (``--help``, ``--version``, a bad command)
    goes through the top-level parser.
    """
    parser = _parser()
    if argv and argv[0] == "train":
        args = _TRAIN_PARSER[0].parse_intermixed_args(argv[1:])
        args.command = "train"
        return args
    return parser.parse_args(argv)


_TRAIN_PARSER: list[argparse.ArgumentParser] = []  # set by _parser()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distlearn", description="Distributed training from YAML configs.")
    from .. import __version__

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
    _TRAIN_PARSER[:] = [train_cmd]
    return parser


class _TiedHeadSaved(logging.Filter):
    """Drops Accelerate's "Removed shared tensor {'head.weight'} while saving" for CharTransformer.

    Its output layer shares the token embedding's weight on purpose (weight tying), so Accelerate's
    save (every checkpoint) finds two names for one tensor, keeps one and warns each time. Only that
    message for that tensor is dropped: any other shared tensor is still reported.
    """

    PATTERN = re.compile(r"(\[RANK \d+\] )?Removed shared tensor \{'(module\.)?head\.weight'\} while saving\.")

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.PATTERN.match(record.getMessage())


def _setup_logging(is_main: bool, quiet: bool) -> None:
    """distlearn's log lines (one per epoch) on stderr, from the main process only."""
    saver = logging.getLogger("accelerate.utils.other")
    if not any(isinstance(f, _TiedHeadSaved) for f in saver.filters):
        saver.addFilter(_TiedHeadSaved())
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


def _say_complete(output_dir: Path, record: dict[str, Any], resolved: dict[str, Any]) -> None:
    """The answer to a rerun of a finished run: nothing trained; how to train more; the folder last."""
    epochs = len(record.get("training") or {})
    print(
        f"distlearn train: the run in {output_dir} is already complete ({epochs} epoch{'s' if epochs != 1 else ''}, "
        f'"status": "completed" in record.json): nothing trained, no tracking started, no file changed.\n'
        f"  to train more epochs, run the same command with {EPOCHS_KEY}=N (N > {epochs}); to start over, "
        "with run.resume=none run.overwrite=true\n"
        f"Output directory: {output_dir}",
        flush=True,
    )


def _title(experiment: Any, accelerator: Any, config: str | None) -> str:
    name = Path(config).stem if config else "digits"
    n_params = sum(p.numel() for p in experiment.model.parameters())
    return (
        f"{name}: {type(experiment.model).__name__} ({n_params:,} parameters), "
        f"{_processes(accelerator.num_processes)} on {accelerator.device.type}"
    )


def _error(message: str) -> None:
    """One message for the user, from one process (the others exit with the same code, silently)."""
    _say(f"error: {message}")


def _say(message: str) -> None:
    """``distlearn: <message>`` on stderr, from the first process only."""
    if os.environ.get("RANK", "0") == "0":
        print(f"distlearn: {message}", file=sys.stderr, flush=True)
