"""One shared file system for every rank, checked before training starts.

Checkpoints are written by every rank into one folder and committed by the main process: on
nodes that do not share the file system, each node would see only its own files, and the run
would fail at its first save (or, worse, resume from a folder another node never wrote). So at
start the main process writes a small probe file with a random token into the run's
``checkpoints/`` folder, every rank reads it back from the folder it will write to, and the
ranks agree: when any rank cannot read it, every rank refuses (exit 2) with a message naming
each rank's host and folder. The probe costs one small file, one broadcast and one gather,
and is removed at once.

A relative ``run.output_dir`` (or the default folder) is resolved against each rank's own
working directory, as any relative path would be: each rank's folder is the main process's
folder taken relative to the main process's working directory (an absolute ``run.output_dir``
is the same path on every rank).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from .errors import RunError, on_main

__all__ = ["PROBE_PREFIX", "SharedFolderError", "rank_folder", "shared_folder"]

PROBE_PREFIX = ".distlearn-probe-"
_READ_TRIES = 3  # a network file system may show a new file a moment late: retry briefly before refusing
_READ_PAUSE_S = 0.2


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
    name, content, main_cwd = on_main(accelerator, "checking the run folder", _write_probe, Path(main_folder))
    folder = rank_folder(configured, main_folder, main_cwd)
    seen = _read_probe(folder / "checkpoints" / name, content)
    views = _gather(f"{socket.gethostname()}\t{folder}\t{int(seen)}")  # every rank has looked once this returns
    if accelerator.is_main_process:
        (folder / "checkpoints" / name).unlink(missing_ok=True)
    if not all(view.endswith("\t1") for view in views):
        raise SharedFolderError(_refusal(views))
    return folder


def _write_probe(folder: Path) -> tuple[str, str, str]:
    """Main process: the probe file, written and flushed; returns its name, its content and this working directory."""
    name, content = f"{PROBE_PREFIX}{secrets.token_hex(8)}", secrets.token_hex(16)
    where = folder / "checkpoints"
    where.mkdir(parents=True, exist_ok=True)
    with open(where / name, "w") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())  # closed and on disk before any other rank looks for it
    return name, content, os.getcwd()


def _read_probe(path: Path, content: str) -> bool:
    """Whether this rank reads ``content`` at ``path`` (a few short tries)."""
    for attempt in range(_READ_TRIES):
        try:
            if path.read_text() == content:
                return True
        except OSError:
            pass
        if attempt + 1 < _READ_TRIES:
            time.sleep(_READ_PAUSE_S)
    return False


def _gather(view: str) -> list[str]:
    """Every rank's ``view``, in rank order (one collective)."""
    from ..accumulators import List

    views = List()
    views(view)
    return views.calculate()


def _refusal(views: list[str]) -> str:
    """The message: which ranks cannot see the main process's probe, on which hosts and folders."""
    rows = [view.split("\t") for view in views]
    main_host, main_folder = rows[0][0], rows[0][1]
    blind = [f"rank {r} on host {host} (folder {path})" for r, (host, path, seen) in enumerate(rows) if seen != "1"]
    hosts = sorted({host for host, _, _ in rows})
    return (
        f"the ranks do not share one run folder: rank 0 on host {main_host} wrote a probe file into "
        f"{main_folder}/checkpoints, and {', '.join(blind)} cannot read it (hosts of this launch: {', '.join(hosts)}). "
        "Checkpoints need one folder every rank sees: set run.output_dir to an absolute path on a file system "
        "shared by every node, and start every rank in the same working directory if it is relative. "
        "Nothing was trained."
    )
