"""Rank 0 decides, every rank follows: the few places where processes must end up on one path.

A process that raises while the others wait in a collective leaves them waiting until the
process-group timeout. So whatever one process finds out alone (the main process writing a
file or starting W&B, one rank's first batch having the wrong form) is shared, through one
collective that every rank runs, before anybody raises:

- :func:`on_main`: the main process runs a function; every rank gets its result, or raises
  :class:`MainProcessFailed` when it failed there.
- :func:`everywhere`: every rank runs a function; a failure on the main process is raised on
  every rank as :class:`MainProcessFailed`.
- :func:`agree`: each rank brings a problem or None; when any rank has one, every rank raises it.
- :func:`from_main`: the main process's objects on every rank (the broadcast the others use).

torch and Accelerate are imported when a function runs, not with this module (the command's
``--help`` stays fast).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["MainProcessFailed", "agree", "everywhere", "from_main", "on_main"]

T = TypeVar("T")


class MainProcessFailed(Exception):
    """A function failed on the main process; raised on every rank.

    Attributes:
        kind: The exception's class name on the main process (e.g. ``"PermissionError"``).
        message: Its message (``str(exc)``).
        error: The exception itself on the main process; None on the other ranks.
    """

    def __init__(self, kind: str, message: str, error: BaseException | None = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.error = error


def from_main(accelerator: Any, objects: list[Any]) -> list[Any]:
    """The main process's ``objects`` on every rank, in place (a collective when there are several).

    Args:
        accelerator: The run's Accelerator (``num_processes``).
        objects: A list of picklable objects; the other ranks' lists are overwritten.

    Returns:
        ``objects``, holding the main process's values.
    """
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(objects, from_process=0)
    return objects


def on_main(accelerator: Any, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` on the main process only; its result, or its failure, on every rank.

    The other ranks wait in the broadcast meanwhile, so a failure there ends every rank
    instead of leaving the others waiting in their next collective.

    Args:
        accelerator: The run's Accelerator.
        fn: The work only the main process does (files, a folder); its result must pickle.
        *args: Its arguments.

    Returns:
        ``fn``'s result on the main process, on every rank.

    Raises:
        MainProcessFailed: On every rank, when ``fn`` raised an ``Exception`` on the main process
            (``error`` holds it there).
    """
    outcome: list[Any] = [("ok", None)]
    error = None
    if accelerator.is_main_process:
        try:
            result = fn(*args)
            if accelerator.num_processes > 1:
                pickle.dumps(result)  # one that cannot travel fails here, where the others hear of it
            outcome[0] = ("ok", result)
        except Exception as exc:
            error = exc
            outcome[0] = ("error", type(exc).__name__, str(exc))
    status, *rest = from_main(accelerator, outcome)[0]
    if status == "error":
        raise MainProcessFailed(*rest, error=error)
    return rest[0]


def everywhere(accelerator: Any, fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` on every rank; when it fails on the main process, fail on every rank.

    For work that every rank calls but only the main process really does (the W&B start: a
    no-op tracker elsewhere). A failure on another rank raises there at once, before the
    broadcast: such a failure is a bug, not an outcome to share.

    Args:
        accelerator: The run's Accelerator.
        fn: The function; its result is dropped.
        *args: Its arguments.

    Raises:
        MainProcessFailed: On every rank, when ``fn`` raised on the main process.
        Exception: Whatever ``fn`` raised on a rank other than the main process.
    """
    failure: list[Any] = [None]
    error = None
    try:
        fn(*args)
    except Exception as exc:  # e.g. wandb's own error classes
        if not accelerator.is_main_process:
            raise
        error = exc
        failure[0] = (type(exc).__name__, str(exc))
    failure = from_main(accelerator, failure)
    if failure[0] is not None:
        raise MainProcessFailed(*failure[0], error=error)


def agree(problem: str | None) -> None:
    """Raise on every rank when any rank found a problem (a collective: every rank calls it).

    One all-reduce of a flag; the messages travel only when something is wrong.

    Args:
        problem: What this rank found wrong, or None.

    Raises:
        ValueError: On every rank when any rank brought a problem: this rank's own, else the
            first rank's that has one, prefixed ``"rank N: "``.
    """
    from ..accumulators import List, Sum

    flags = Sum()
    flags(int(problem is not None))
    if flags.calculate() == 0:
        return
    problems = List()
    problems(problem or "")
    found = [(rank, text) for rank, text in enumerate(problems.calculate()) if text]
    raise ValueError(problem or f"rank {found[0][0]}: {found[0][1]}")
