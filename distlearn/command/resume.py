"""Where a run starts: a fresh output folder, or the newest checkpoint of the run it continues.

``run.resume: auto`` continues the run in ``run.output_dir`` from its newest complete
checkpoint; a checkpoint path continues from that one; ``none`` starts over. A resume is
refused before training when the experiment differs from the one the checkpoint saved
(only :data:`RESUME_MAY_CHANGE` may change) or its global batch cannot split over this
launch's processes; a finished run started again trains nothing.
"""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..options import DEFAULT_RESUME_BATCH
from ..runtime import launch
from .console import processes
from .group import launch_identity

__all__ = ["EPOCHS_KEY", "RESUME_MAY_CHANGE", "config_changes", "follows_epochs", "resume_hint", "resume_point",
           "say_complete", "start_folder"]

EPOCHS_KEY = "learner_configs.learner_parameters.n_epochs"
# run.overwrite=true replaces the outputs but continues the folder's run: SLURM requeues and torchrun
# restarts rerun the same arguments and rely on it. Said wherever it resumes or finds the run complete.
OVERWRITE_RESUMES = ("run.overwrite=true keeps the folder's checkpoints and continues its run; to start over, "
                     "add run.resume=none")

# Config keys a resumed run may change: how long it runs, how it is tracked, checkpointed and shown.
RESUME_MAY_CHANGE = (
    "learner_configs.learner_parameters.n_epochs",
    "learner_configs.learner_parameters.display_every_n_steps",
    "run.output_dir", "run.overwrite", "run.resume", "run.tracking", "run.checkpoint", "run.timeout_s", "run.nonfinite",
    "run.resume_batch",
)


def start_folder(resolved: dict[str, Any], config: str | None, follows_epochs: Sequence[str] = ()) -> dict[str, Any]:
    """Main process: the output folder and the checkpoint the run continues from (``run.resume``).

    Returns:
        ``output_dir``, ``created`` (the folder is new), ``resume_from`` (a checkpoint folder
        or None), ``wandb_run_id`` (the resumed run's) and ``log``: lines for the log.

    Raises:
        ValueError: an unusable folder or checkpoint, or a checkpoint of another experiment.
    """
    from .run_folder import default_output_dir, prepare_output_dir, recover_outputs, remove_if_unused

    run = resolved["run"]
    mode = run["resume"]
    if run["output_dir"] is None and mode != "none":
        identity = launch_identity()  # a restarted or requeued launch continues its own default folder
        if identity is not None:
            base = default_output_dir(config)
            run["output_dir"] = str(base.with_name(f"{base.name.rsplit('-', 2)[0]}-{identity}"))
    recovered = recover_outputs(run["output_dir"])  # a swap a kill left is made whole before the folder is read
    existed = run["output_dir"] is not None and Path(run["output_dir"]).expanduser().exists()
    output_dir = prepare_output_dir(run["output_dir"], run["overwrite"], config, resumable=mode != "none")
    try:
        out = resume_point(resolved, output_dir, created=not existed, follows_epochs=follows_epochs)
    except BaseException:
        if not existed:
            remove_if_unused(output_dir)
        raise
    out["log"] += [recovered] if recovered else []
    return out


def resume_point(resolved: dict[str, Any], output_dir: Path, created: bool,
                 follows_epochs: Sequence[str] = ()) -> dict[str, Any]:
    """The checkpoint this run continues from, in ``output_dir`` (see :func:`start_folder`).

    Returns:
        As :func:`start_folder`; with ``complete``: the record of a finished run (nothing to train).
    """
    from ..training import checkpoint

    run = resolved["run"]
    out = {"output_dir": str(output_dir), "created": created, "resume_from": None, "wandb_run_id": None, "log": []}
    if run["resume"] == "none":
        if run["overwrite"]:  # a fresh run in an overwritten folder: the old run's checkpoints must not mix in
            shutil.rmtree(checkpoint.checkpoint_dir(output_dir), ignore_errors=True)
        return out
    found = _checkpoint_to_resume(run["resume"], output_dir)
    if found is None:
        if launch.restart_count():
            out["log"].append(f"restart {launch.restart_count()} of this launch: no checkpoint yet in {output_dir}, "
                              "starting from the beginning")
        return out
    path, meta = found
    _check_processes(run, output_dir, path, meta)
    changed = _check_same_experiment(path, meta, resolved, follows_epochs)
    complete = completed_record(output_dir, resolved, meta["epoch"], meta["batches_done"])
    if complete is not None:  # nothing left to train: no resume line, no W&B run, no training
        out["complete"] = complete
        return out
    progress = checkpoint.load_progress(path, 0)
    out["resume_from"] = str(path)
    out["wandb_run_id"] = (progress.get("extra") or {}).get("wandb_run_id")
    out["log"] += _resume_lines(run, path, meta, changed)
    return out


def _checkpoint_to_resume(mode: str, output_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """(checkpoint folder, its metadata): the newest in ``output_dir`` for ``auto`` (None: there is
    none yet), else the checkpoint ``mode`` names.

    Raises:
        ValueError: The named checkpoint is not usable.
    """
    from ..training import checkpoint

    if mode == "auto":
        return checkpoint.latest(output_dir)
    path = Path(mode).expanduser()
    try:
        return path, checkpoint.committed_marker(path)
    except checkpoint.CheckpointError as exc:
        raise ValueError(f"run.resume={mode!r}: not a usable checkpoint: {exc}") from None


def _check_processes(run: dict[str, Any], output_dir: Path, path: Path, meta: Mapping[str, Any]) -> None:
    """An elastic resume keeping the global batch: it must split over this launch's processes.

    Raises:
        ValueError: It does not (checked before training).
    """
    from ..training import checkpoint

    world = launch.launched_world_size()
    if meta.get("world_size") != world and run.get("resume_batch", DEFAULT_RESUME_BATCH) == "global":
        try:
            checkpoint.Checkpoints(output_dir, resume_from=path).per_process_batch(world, 1)
        except checkpoint.CheckpointError as exc:
            raise ValueError(f"cannot resume from {path} on {world} processes: {exc}") from None


def _check_same_experiment(path: Path, meta: Mapping[str, Any], resolved: dict[str, Any],
                           follows_epochs: Sequence[str]) -> list[tuple]:
    """The changes since the checkpoint that a resume may make.

    Raises:
        ValueError: Any other change (model, optimizer, data, ...), each named with its old and new value.
    """
    changed, conflicts = config_changes(meta.get("config") or {}, resolved)
    if conflicts:
        listed = "\n  - ".join(_conflict_line(c, changed, follows_epochs) for c in conflicts)
        raise ValueError(
            f"cannot resume from {path}: the experiment differs from the one it saved:\n  - {listed}\n"
            "Resume with the same config, start a new run (another run.output_dir), or set run.resume=none "
            "with run.overwrite=true to start over in this folder."
        )
    return changed


def _resume_lines(run: dict[str, Any], path: Path, meta: Mapping[str, Any], changed: list[tuple]) -> list[str]:
    """The log lines of a resume: from where, a change in the process count, each allowed change."""
    epoch, done = meta["epoch"], meta["batches_done"]
    where = f"epoch {epoch + 1}, after batch {done}" if done else f"the start of epoch {epoch + 1}"
    restart = launch.restart_count()
    again = f"restart {restart} of this launch: " if restart else ""
    first = f"{again}resuming from checkpoint {path} ({where}, optimizer step {meta['step']})"
    if run["overwrite"]:  # HF Trainer's overwrite_output_dir starts over; this one keeps the checkpoints
        first += f": {OVERWRITE_RESUMES}"
    lines = [first]
    world, saved_world = launch.launched_world_size(), meta.get("world_size")
    if saved_world != world:
        policy = run.get("resume_batch", DEFAULT_RESUME_BATCH)
        lines.append(
            f"the checkpoint was written by {processes(saved_world)}, this launch has {world}: "
            + (f"global batch {meta.get('global_batch')} kept (run.resume_batch: global)" if policy == "global"
               else "per-process batch kept, the global batch changes (run.resume_batch: per_process)")
        )
    return lines + [f"changed since the checkpoint: {key} {old!r} -> {new!r}" for key, old, new in changed]


def completed_record(output_dir: Path, resolved: dict[str, Any], epoch: int, done: int) -> dict[str, Any] | None:
    """The record of a finished run in ``output_dir`` when the checkpoint is past the last epoch, else None.

    A run that completed (``"status": "completed"`` in record.json) and is started again with the same
    ``n_epochs`` has nothing left to train: it is not resumed (a resume would open a new W&B run and
    rewrite the outputs for no epoch). A larger ``n_epochs`` resumes it. A run that stopped early
    (``run.early_stopping``) is complete whatever ``n_epochs`` says: its checkpoint is the one after
    its ``stopped_epoch``.
    """
    from .files import read_record

    n_epochs = (resolved["learner_configs"].get("learner_parameters") or {}).get("n_epochs")
    if done or not isinstance(n_epochs, int):
        return None
    try:
        record = read_record(output_dir)  # with batches.jsonl's per-batch values, as the learner returned it
    except (OSError, ValueError, KeyError, AttributeError):
        return None  # stopped after the last checkpoint, before its outputs: resuming writes them
    if not isinstance(record, dict) or record.get("status") != "completed":
        return None
    stopped = record.get("stopped_early") and record.get("stopped_epoch") == epoch - 1
    return record if epoch >= n_epochs or stopped else None


def say_complete(output_dir: Path, record: dict[str, Any], overwrite: bool = False) -> None:
    """The answer to a rerun of a finished run: nothing trained; how to train more; the folder last.

    With ``overwrite`` (``run.overwrite=true`` given), it says that this does not start over.
    """
    epochs = len(record.get("training") or {})
    start_over = OVERWRITE_RESUMES if overwrite else "to start over, add run.resume=none run.overwrite=true"
    more = f"to train more epochs, run the same command with {EPOCHS_KEY}=N (N > {epochs}); {start_over}"
    if record.get("stopped_early"):  # more epochs would train none: early stopping decided
        more = (f"run.early_stopping stopped it after epoch {int(record['stopped_epoch']) + 1} "
                f"(best epoch {int(record['best_epoch']) + 1}); {start_over}")
    print(
        f"distlearn train: the run in {output_dir} is already complete ({epochs} epoch{'s' if epochs != 1 else ''}, "
        f'"status": "completed" in record.json): nothing trained, no tracking started, no output written.\n'
        f"  {more}\n"
        f"Output directory: {output_dir}",
        flush=True,
    )


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


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[tuple], list[tuple]]:
    """The differences between a checkpoint's config and this run's, as (key, old, new) triples.

    Returns:
        ``(allowed, conflicts)``: changes a resumed run may make (``RESUME_MAY_CHANGE``), and the
        others (model, optimizer, data, loss, metric, seeds), which make resuming wrong. A ``run`` key
        missing on either side (a checkpoint written before the key existed) counts as its default.
    """
    from ..experiment.defaults import RUN_DEFAULTS

    defaults = _flatten({"run": RUN_DEFAULTS})
    a, b = {**defaults, **_flatten(old)}, {**defaults, **_flatten(new)}
    allowed, conflicts = [], []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<unset>") == b.get(key, "<unset>"):
            continue
        change = (key, a.get(key, "<unset>"), b.get(key, "<unset>"))
        safe = any(key == k or key.startswith(k + ".") for k in RESUME_MAY_CHANGE)
        (allowed if safe else conflicts).append(change)
    return allowed, conflicts


def follows_epochs(cfg: Any) -> list[str]:
    """The keys whose value is interpolated from ``n_epochs`` (e.g. a cosine schedule's
    ``T_max: ${learner_configs.learner_parameters.n_epochs}``): they change with it."""
    from omegaconf import OmegaConf

    raw = _flatten(OmegaConf.to_container(cfg, resolve=False))
    return sorted(k for k, v in raw.items() if isinstance(v, str) and "${" in v and "n_epochs" in v)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


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
    quoted = shlex.join(args)
    script = launch.launch_script_command(environ)
    if script:  # e.g. "DISTLEARN_CPU_PROCS=2 launch/train.sh": the script takes the arguments after "train"
        return f"resume with: {script} {shlex.join(args[1:])}"
    if num_processes <= 1 and not launch.launched_by_torchelastic(environ):
        return f"resume with: distlearn {quoted}"
    launcher = "accelerate launch" if launch.launched_by_accelerate(environ) else "torchrun"
    return (f"resume with the same launch ({launcher}, {processes(num_processes)}) "
            f"and the arguments: -m distlearn {quoted}")
