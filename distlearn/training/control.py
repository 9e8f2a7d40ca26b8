"""The control channel: the flags that travel with the loop's loss reductions.

A stop signal one rank received must reach every rank at the same step, or the
ranks would part ways in their collectives. Rather than spend a collective of its
own, the flags ride in the reduction the loop does anyway (the running loss at a
display step, the epoch's numbers at its end): each rank adds one integer per stop
signal, and the summed vector names the signal every rank then stops on.

Two more integers ride along for the checkpoints: the main process's "time is up" for
a timed checkpoint (``run.checkpoint.every_n_minutes``; only the main process's clock
votes, so every rank learns at the same display step that a checkpoint is due), and
each rank's "my background write has finished" (``run.checkpoint.async``: when every
rank says so, the checkpoint is committed).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ..accumulators import Sum

__all__ = ["STOP_SIGNALS", "StopFlags", "stop_signals_to"]

# The signals that stop a run with a checkpoint: SLURM's and a launcher's SIGTERM, Ctrl-C, and the
# SIGUSR1 that `sbatch --signal=USR1@N` sends N seconds before the time limit. Their order is the
# order of the stop flags the ranks exchange.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name)
)


@dataclass(frozen=True)
class StopFlags:
    """One rank's stop flags: 1 for the stop signal this process received, 0 for the others.

    Attributes:
        flags: One int per signal of :data:`STOP_SIGNALS`, in that order.
        time_up: This process (the main one) finds a timed checkpoint due.
        written: This process's background checkpoint write has finished.
    """

    flags: tuple[int, ...]
    time_up: bool = False
    written: bool = False

    @classmethod
    def received(cls, signum: int | None, time_up: bool = False, written: bool = False) -> StopFlags:
        """The flags of a process that received ``signum`` (None: no signal), its vote for a timed
        checkpoint, and whether its background write has finished."""
        return cls(tuple(int(signum == stop) for stop in STOP_SIGNALS), time_up, written)

    def pack(self) -> Sum:
        """The flags as an accumulator, to add to a reduction's accumulators (summed over ranks)."""
        summed = Sum()
        summed(torch.tensor((*self.flags, int(self.time_up), int(self.written)), dtype=torch.int64))
        return summed

    @staticmethod
    def written_in(summed: Sequence[int] | torch.Tensor) -> int:
        """How many ranks' background writes have finished, by the summed flags."""
        counts = summed.tolist() if isinstance(summed, torch.Tensor) else summed
        return int(counts[len(STOP_SIGNALS) + 1]) if len(counts) > len(STOP_SIGNALS) + 1 else 0

    @staticmethod
    def time_is_up(summed: Sequence[int] | torch.Tensor) -> bool:
        """Whether the summed flags say a timed checkpoint is due (the vote after the signals' flags)."""
        counts = summed.tolist() if isinstance(summed, torch.Tensor) else summed
        return len(counts) > len(STOP_SIGNALS) and bool(counts[len(STOP_SIGNALS)])

    @staticmethod
    def unpack(summed: Sequence[int] | torch.Tensor) -> int | None:
        """The signal the summed flags of every rank name (the first in ``STOP_SIGNALS`` order), or None."""
        counts = summed.tolist() if isinstance(summed, torch.Tensor) else summed
        for signum, count in zip(STOP_SIGNALS, counts):
            if count:
                return signum
        return None


@contextmanager
def stop_signals_to(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """While inside, every signal of :data:`STOP_SIGNALS` calls ``handler(signum, frame)``; the
    handlers before are restored on leaving. Off the main thread (where Python cannot install
    handlers) nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
