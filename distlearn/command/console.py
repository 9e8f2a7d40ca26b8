"""What the command says on the terminal: its log lines, its messages, and the lines of a finished run.

Only the first process speaks: the others exit with the same code, silently.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

from ..runtime.launch import rank

__all__ = ["error", "logger", "processes", "run_title", "say", "setup_logging", "warn"]

logger = logging.getLogger("distlearn")

def processes(n: Any) -> str:
    """``"1 process"``, ``"3 processes"``."""
    return f"{n} process" if n == 1 else f"{n} processes"


def say(message: str) -> None:
    """``distlearn: <message>`` on stderr, from the first process only."""
    if rank() == 0:
        print(f"distlearn: {message}", file=sys.stderr, flush=True)


def error(message: str) -> None:
    """One message for the user, from one process (the others exit with the same code, silently)."""
    say(f"error: {message}")


def warn(message: str) -> None:
    """``distlearn: warning: <message>`` on stderr, from the process that found it."""
    print(f"distlearn: warning: {message}", file=sys.stderr, flush=True)


class _TiedHeadSaved(logging.Filter):
    """Drops Accelerate's "Removed shared tensor {'head.weight'} while saving" for CharTransformer.

    Its output layer shares the token embedding's weight on purpose (weight tying), so Accelerate's
    save (every checkpoint) finds two names for one tensor, keeps one and warns each time. Only that
    message for that tensor is dropped: any other shared tensor is still reported.
    """

    PATTERN = re.compile(r"(\[RANK \d+\] )?Removed shared tensor \{'(module\.)?head\.weight'\} while saving\.")

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.PATTERN.match(record.getMessage())


def setup_logging(is_main: bool, quiet: bool) -> None:
    """distlearn's log lines (one per epoch) on stderr, from the main process only."""
    saver = logging.getLogger("accelerate.utils.other")
    if not any(isinstance(f, _TiedHeadSaved) for f in saver.filters):
        saver.addFilter(_TiedHeadSaved())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main and not quiet else logging.WARNING)


def run_title(experiment: Any, accelerator: Any, config: str | None) -> str:
    """The summary's first line: the config, the model and its size, the processes and device."""
    from ..experiment.config import DEFAULT_CONFIG_NAME

    name = Path(config).stem if config else DEFAULT_CONFIG_NAME
    n_params = sum(p.numel() for p in experiment.model.parameters())
    return (
        f"{name}: {type(experiment.model).__name__} ({n_params:,} parameters), "
        f"{processes(accelerator.num_processes)} on {accelerator.device.type}"
    )

