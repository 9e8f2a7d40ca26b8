"""The option values distlearn accepts, and the small checks every module shares.

One owner for each constant (the config validator, the learner and the Accelerator
builder all read them from here) and one helper each for the two checks written in
many places: an int that is not a bool, and the "did you mean" hint of an error
message. Nothing here imports torch: the command line's error paths stay fast.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "MIXED_PRECISION",
    "NONFINITE_MODES",
    "DEFAULT_KEEP_LAST",
    "DEFAULT_RESUME_BATCH",
    "RESUME_BATCH_MODES",
    "RESUME_MODES",
    "SCHEDULER_INTERVALS",
    "TRACKING_BACKENDS",
    "TRACKING_MODES",
    "did_you_mean",
    "is_int",
    "is_number",
]

MIXED_PRECISION = ("no", "bf16", "fp16")  # fp16 needs a GPU: on CPU Accelerate would silently train in fp32
SCHEDULER_INTERVALS = ("epoch", "step")
TRACKING_BACKENDS = ("wandb", "none")
TRACKING_MODES = ("online", "offline", "disabled")
RESUME_MODES = ("auto", "none")  # or the path of a checkpoint folder
NONFINITE_MODES = ("error", "skip")  # a NaN/inf training loss: stop, or skip that optimizer step
# On a resume with another process count: keep the global batch (the per-process batch changes), or the
# per-process batch (the global batch changes).
RESUME_BATCH_MODES = ("global", "per_process")
DEFAULT_RESUME_BATCH = "global"
DEFAULT_TIMEOUT_S = 300  # process-group timeout (run.timeout_s, build_accelerator): a rank that never arrives ends the run
DEFAULT_KEEP_LAST = 2  # complete checkpoints kept: the newest may still be being written by a later save


def is_int(value: Any) -> bool:
    """Whether ``value`` is an int and not a bool (YAML's ``true`` is an int to Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether ``value`` is an int or a float and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def did_you_mean(
    word: str, candidates: Iterable[str] | Mapping[str, str], cutoff: float = 0.6, prefixes: bool = False
) -> str:
    """``" — did you mean 'X'?"`` for the candidate closest to ``word`` (ignoring case), or "".

    Args:
        word: What the user wrote.
        candidates: The valid names; for a mapping, the closest key is matched and its value shown
            (e.g. a class name matched, its dotted path shown).
        cutoff: The least similarity (0..1) worth a suggestion.
        prefixes: When nothing is that close, also take a candidate ``word`` starts with (the longest,
            of 2 characters or more: ``F1Score`` -> ``F1``), or the only one that starts with
            ``word`` (3 characters or more: ``Binned`` -> ``BinnedAUROC`` when it is the only one).

    Returns:
        The hint, starting with a space, or "" when nothing is close.
    """
    shown = candidates if isinstance(candidates, Mapping) else {c: c for c in candidates}
    by_lower: dict[str, str] = {}
    for c in shown:
        by_lower.setdefault(str(c).lower(), c)
    lower = str(word).lower()
    close = difflib.get_close_matches(lower, list(by_lower), n=1, cutoff=cutoff)
    if not close and prefixes:
        heads = sorted((c for c in by_lower if len(c) >= 2 and lower.startswith(c)), key=len, reverse=True)
        longer = [c for c in by_lower if len(lower) >= 3 and c.startswith(lower)]
        close = heads[:1] or (longer if len(longer) == 1 else [])
    return f" — did you mean {shown[by_lower[close[0]]]!r}?" if close else ""
