"""How the command fails: one message and one exit code, on every rank together.

A problem with the user's input or launch is a :class:`RunError`, reported as a message
without a traceback. Work that only the main process does (files, W&B) goes through
:func:`on_main` / :func:`everywhere`, which turn its failure into the same error on every
rank (:mod:`distlearn.runtime.ranks` holds the collective).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ..runtime import ranks

__all__ = ["EXIT_BAD_INPUT", "EXIT_TRAINING_FAILED", "RunError", "Stopped", "everywhere", "on_main"]

EXIT_BAD_INPUT = 2  # as argparse: the command cannot run as given
EXIT_TRAINING_FAILED = 1
T = TypeVar("T")


class RunError(Exception):
    """A problem with the user's input or launch: reported as a message, without a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT, together: bool = True,
                 every_rank: bool = False) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.together = together  # every rank raises it at the same point (else nobody waits at the end)
        self.every_rank = every_rank  # each rank says it, not rank 0 only (what it found may be its alone)


class Stopped(RunError):
    """The run stopped on a signal, as asked, after its checkpoint: reported without "error"."""


def on_main(accelerator: Any, what: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on the main process only (files, folders), its result on every rank; a failure
    there ends every rank (see :func:`distlearn.runtime.ranks.on_main`).

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


def everywhere(accelerator: Any, what: str, fn: Callable[..., Any], *args: Any) -> None:
    """``fn(*args)`` on every rank (the W&B start: a no-op off the main process); when it fails on the
    main process, every rank ends with a RunError saying how to train without W&B."""
    try:
        ranks.everywhere(accelerator, fn, *args)
    except ranks.MainProcessFailed as exc:
        raise RunError(
            f"{what}: {exc.kind}: {exc.message}. Set WANDB_MODE=offline (no network needed) or "
            "run.tracking.backend=none to train without it."
        ) from None
