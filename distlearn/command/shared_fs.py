"""One shared file system for every rank, checked before training starts.

Checkpoints are written by every rank into one folder and committed by the main process: on
nodes that do not share the file system, each node would see only its own files, and the run
would fail at its first save (or, worse, resume from a folder another node never wrote). So at
start the main process writes a small probe file with a random token into the run's
``checkpoints/`` folder, every rank reads it back from the folder it will write to, and the
ranks agree: when any rank cannot read it, every rank refuses (exit 2) with a message naming
each rank's host and folder. The probe costs one small file, one broadcast and one gather,
and is removed at once; it is :mod:`distlearn.training.shared_folder`'s (the learner runs it too,
for API users), run here before the run folder is used at all, with each rank's folder mapped.

A relative ``run.output_dir`` (or the default folder) is resolved against each rank's own
working directory, as any relative path would be: each rank's folder is the main process's
folder taken relative to the main process's working directory (an absolute ``run.output_dir``
is the same path on every rank).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..training.shared_folder import PROBE_PREFIX, all_seen, read_back, refusal, write_probe
from .errors import RunError, on_main

__all__ = ["PROBE_PREFIX", "SharedFolderError", "rank_folder", "shared_folder"]

_CLI_FIX = ("set run.output_dir to an absolute path on a file system shared by every node, and start every rank "
            "in the same working directory if it is relative")


class SharedFolderError(RunError):
    """The ranks do not see one shared run folder: an input problem (exit 2), raised on every rank together."""


def rank_folder(configured: str | None, main_folder: str | Path, main_cwd: str | Path) -> Path:
    """The run folder as this rank sees it.

    Args:
        configured: ``run.output_dir`` as written in the config (None: the default folder).
        main_folder: The absolute folder the main process chose.
        main_cwd: The main process's working directory.

    Returns:
        ``main_folder`` for an absolute ``run.output_dir``; otherwise the same path relative to this
        rank's working directory as it is to the main process's.
    """
    main_folder = Path(main_folder)
    if configured is not None and Path(configured).expanduser().is_absolute():
        return main_folder
    try:
        relative = main_folder.relative_to(main_cwd)
    except ValueError:  # a relative path that leads out of the working directory: keep the main process's
        return main_folder
    return (Path.cwd() / relative).resolve()


def shared_folder(accelerator: Any, configured: str | None, main_folder: str | Path) -> Path:
    """This rank's run folder, once every rank has read the probe the main process wrote there.

    Every rank calls it (collectives inside; on a single process it only returns ``main_folder``).
    The probe goes to the folder's ``checkpoints/`` and is removed before this returns.

    Args:
        accelerator: The run's Accelerator.
        configured: ``run.output_dir`` as written in the config (None: the default folder).
        main_folder: The absolute folder the main process chose (and created).

    Returns:
        The run folder as this rank sees it (:func:`rank_folder`).

    Raises:
        SharedFolderError: On every rank, when a rank cannot read the probe: the message names
            every rank's host and folder, and the fix.
        RunError: On every rank, when the main process could not write the probe.
    """
    if accelerator.num_processes == 1:
        return Path(main_folder)
    name, content, main_cwd = on_main(accelerator, "checking the run folder", write_probe, Path(main_folder))
    folder = rank_folder(configured, main_folder, main_cwd)
    views = read_back(accelerator, folder, name, content)
    if not all_seen(views):
        raise SharedFolderError(refusal(views, _CLI_FIX))
    return folder
