"""``distlearn export RUN_DIR [--checkpoint best|last|PATH] [--output DIR] [--max-shard-size SIZE]``: a run's
weights as plain safetensors a user loads without distlearn.

From any weights a run kept (its final ``model.safetensors`` or shards, ``best/``, a checkpoint, sharded with
FSDP2 or not) it writes what training writes at its end: one ``model.safetensors`` up to ``--max-shard-size``
(default 5GB, as Hugging Face), HF-style shards and ``model.safetensors.index.json`` above it. One process,
no process group: a sharded checkpoint's DCP folder is read a file's worth of tensors at a time. The files
are written as one set (staged, committed by a rename: :func:`distlearn.command.files.replace_set`), so a
kill leaves the earlier export or the new one; an existing export is replaced only with ``--overwrite``.
"""

from __future__ import annotations

from pathlib import Path

from .console import say
from .errors import RunError

__all__ = ["default_output", "export_run"]


def default_output(run_dir: Path, label: str) -> Path:
    """Where an export goes without ``--output``: ``RUN_DIR/export-<label>`` (``best``, ``last``, a checkpoint)."""
    return run_dir / f"export-{label}"


def export_run(run_dir: str, checkpoint: str = "last", output: str | None = None, max_shard_size: str | None = None,
               overwrite: bool = False, quiet: bool = False) -> list[Path]:
    """``distlearn export``: write the chosen weights of a run as full, plain safetensors.

    Returns:
        The files written (none on a launched process other than the first: one process exports).

    Raises:
        RunError: Bad input (no run folder, no such weights, a bad size, an output that holds weights already
            without ``overwrite``, or that is the run's own weights), or weights that cannot be read.
    """
    from ..experiment.saved_run import choose_weights, open_folder
    from ..runtime.launch import rank
    from ..training.full_weights import DEFAULT_MAX_SHARD_SIZE, SIZE_EXPECTED, parse_size

    if rank() != 0:  # under a launcher the first process exports; the others would write the same files
        return []
    try:
        limit = DEFAULT_MAX_SHARD_SIZE if max_shard_size is None else parse_size(max_shard_size)
    except ValueError:
        raise RunError(f"--max-shard-size: expected {SIZE_EXPECTED}, got {max_shard_size!r}") from None
    try:
        folder = open_folder(run_dir)
        weights = choose_weights(folder, checkpoint)
    except ValueError as exc:
        raise RunError(str(exc)) from None
    target = Path(output).expanduser() if output is not None else default_output(folder, weights.label)
    _check_target(target, folder, overwrite)
    files = _write(target, weights.path, limit)
    if not quiet:
        size = sum(p.stat().st_size for p in files)
        say(f"exported {weights.source} of {folder} to {target}: {len(files)} file(s), {size / 1e6:.1f} MB "
            f"({', '.join(p.name for p in files[:3])}{', ...' if len(files) > 3 else ''})")
    return files


def _check_target(target: Path, run_dir: Path, overwrite: bool) -> None:
    """Refuse a target that is a file, one of the run's own weight folders, or holds weights (without overwrite)."""
    from ..training.full_weights import is_weights_file

    if target.exists() and not target.is_dir():
        raise RunError(f"--output {str(target)!r} is a file; give a folder (created if missing)")
    resolved, checkpoints = target.resolve(), run_dir / "checkpoints"
    if resolved in (run_dir, run_dir / "best", checkpoints) or checkpoints in resolved.parents:
        raise RunError(f"--output {str(target)!r} is where the run keeps its own weights; give another folder "
                       f"(default: {default_output(run_dir, '<checkpoint>')})")
    held = sorted(p.name for p in target.iterdir() if is_weights_file(p.name)) if target.is_dir() else []
    if held and not overwrite:
        raise RunError(f"--output {str(target)!r} holds weights already ({', '.join(held[:3])}); nothing was "
                       "changed. Give --overwrite to replace them, or another --output")


def _write(target: Path, weights: Path, limit: int) -> list[Path]:
    """The weights at ``weights`` written into ``target`` as one set; a failure leaves no new empty folder."""
    from ..training.full_weights import WEIGHTS_FILE, save_full_weights
    from ..training.weight_files import open_weights
    from .files import replace_set
    from .run_folder import remove_if_unused

    created = not target.exists()
    try:
        source = open_weights(weights)
        target.mkdir(parents=True, exist_ok=True)
        return replace_set(target, {WEIGHTS_FILE: lambda path: save_full_weights(path.parent, source,
                                                                                  max_shard_size=limit)})
    except (OSError, ValueError) as exc:
        if created:
            remove_if_unused(target)
        raise RunError(f"exporting {weights}: {exc}") from None
