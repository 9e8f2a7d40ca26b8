"""Room for the next checkpoint: a save that would fill the disk is skipped, not started.

A save that runs out of space fails in the middle of writing, on some rank, with the others
waiting in a collective. So before each save the main process compares the free space of the
checkpoint folder's file system (``shutil.disk_usage``) with the size of the newest complete
checkpoint plus a margin; when it is short, every rank skips this save (the previous checkpoint
stays, and training goes on), and one warning names the folder, the free and the needed bytes.
The first save of a run has nothing to compare with and is not checked.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["MARGIN", "checkpoint_bytes", "shortfall"]

# A checkpoint may grow a little from one save to the next (the record, pickled RNG states): ask for this much more.
MARGIN = 0.10


def checkpoint_bytes(marker: Mapping[str, Any]) -> int:
    """The bytes of a committed checkpoint: the sum of the file sizes its commit marker lists."""
    return int(sum(marker.get("files", {}).values()))


def shortfall(folder: str | Path, last: tuple[Path, Mapping[str, Any]] | None, name: str) -> str | None:
    """Why the save of checkpoint ``name`` into ``folder`` would not fit, or None when it fits.

    Args:
        folder: The checkpoints folder (it exists).
        last: The newest complete checkpoint ``(folder, marker)``, or None (nothing to compare with).
        name: The folder name the save would commit.

    Returns:
        The warning: the folder, its free bytes, the bytes needed and the checkpoint kept.
    """
    if last is None:
        return None
    size = checkpoint_bytes(last[1])
    needed = math.ceil(size * (1 + MARGIN))
    free = shutil.disk_usage(folder).free
    if free >= needed:
        return None
    return (f"not saving checkpoint {name}: {folder} has {free} bytes free, {needed} needed (the last checkpoint's "
            f"{size} bytes + {MARGIN:.0%}); keeping {last[0]} and training on. Free some space, or lower "
            "run.checkpoint.keep_last")
