"""One checkpoint folder every rank sees: the probe, run once before the first save.

Checkpoints are written by every rank into one folder and committed by the main process: on
nodes that do not share the file system, each node would see only its own files, and the run
would fail at its first save (or, worse, resume from a folder another node never wrote). The
main process writes a small probe file with a random token into the ``checkpoints/`` folder,
every rank reads it back from the folder it will write to, and the ranks agree: when any rank
cannot read it, every rank refuses with a message naming each rank's host and folder. The probe
costs one small file, one broadcast and one gather, and is removed at once.

``BackwardLearner.train`` runs it (:func:`check_checkpoint_folder`) for ``Checkpoints`` on several
processes, so a Python API user gets the refusal before any training; ``distlearn train`` runs it
earlier still (:mod:`distlearn.command.shared_fs`), before the run folder is used at all.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from ..runtime import ranks

__all__ = ["PROBE_PREFIX", "FolderNotShared", "all_seen", "check_checkpoint_folder", "read_back", "refusal",
           "write_probe"]

PROBE_PREFIX = ".distlearn-probe-"
_READ_TRIES = 3  # a network file system may show a new file a moment late: retry briefly before refusing
_READ_PAUSE_S = 0.2
_API_FIX = ("give Checkpoints an output_dir on a file system shared by every node: an absolute path, or a "
            "relative one with every rank started in the same working directory")


class FolderNotShared(ValueError):
    """The ranks do not see one checkpoint folder; raised on every rank together, before any training."""


def check_checkpoint_folder(accelerator: Any, checkpoints: Any) -> None:
    """Refuse, on every rank, a ``Checkpoints`` folder that not every rank sees (no-op on one process).

    Each rank probes ``checkpoints.output_dir`` as it resolves it (a relative one against its own
    working directory). Every rank calls it (collectives inside).

    Raises:
        FolderNotShared: On every rank: a rank cannot read the main process's probe (the message
            names every rank's host and folder), or the main process cannot write it.
    """
    if accelerator.num_processes == 1:
        return
    folder = Path(checkpoints.output_dir).resolve()
    try:
        name, content, _ = ranks.on_main(accelerator, write_probe, folder)
    except ranks.MainProcessFailed as exc:
        raise FolderNotShared(f"checking the checkpoint folder {folder}: {exc}") from None
    views = read_back(accelerator, folder, name, content)
    if not all_seen(views):
        raise FolderNotShared(refusal(views, _API_FIX))


def write_probe(folder: Path) -> tuple[str, str, str]:
    """Main process: the probe file in ``folder/checkpoints``, written and flushed; returns its name, its
    content and this working directory."""
    name, content = f"{PROBE_PREFIX}{secrets.token_hex(8)}", secrets.token_hex(16)
    where = folder / "checkpoints"
    where.mkdir(parents=True, exist_ok=True)
    with open(where / name, "w") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())  # closed and on disk before any other rank looks for it
    return name, content, os.getcwd()


def read_back(accelerator: Any, folder: Path, name: str, content: str) -> list[str]:
    """Every rank's view of the probe in its own ``folder`` (host, folder, seen), in rank order; the main
    process removes the probe once every rank has looked. Every rank calls it (one collective)."""
    seen = _read_probe(folder / "checkpoints" / name, content)
    views = _gather(f"{socket.gethostname()}\t{folder}\t{int(seen)}")  # every rank has looked once this returns
    if accelerator.is_main_process:
        (folder / "checkpoints" / name).unlink(missing_ok=True)
    return views


def all_seen(views: list[str]) -> bool:
    """Whether every rank read the probe."""
    return all(view.endswith("\t1") for view in views)


def refusal(views: list[str], fix: str) -> str:
    """The message: which ranks cannot see the main process's probe, on which hosts and folders, and ``fix``."""
    rows = [view.split("\t") for view in views]
    main_host, main_folder = rows[0][0], rows[0][1]
    blind = [f"rank {r} on host {host} (folder {path})" for r, (host, path, seen) in enumerate(rows) if seen != "1"]
    hosts = sorted({host for host, _, _ in rows})
    return (
        f"the ranks do not share one run folder: rank 0 on host {main_host} wrote a probe file into "
        f"{main_folder}/checkpoints, and {', '.join(blind)} cannot read it (hosts of this launch: {', '.join(hosts)}). "
        f"Checkpoints need one folder every rank sees: {fix}. Nothing was trained."
    )


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
