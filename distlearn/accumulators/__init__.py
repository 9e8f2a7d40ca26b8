"""Accumulators: local partial state on each rank, exact global values on demand.

Calling an accumulator accumulates locally (no collective, no host sync) and
returns the local running value. :func:`calculate` is the only collective: it
reduces any number of accumulators and metrics across ranks in a fixed,
small number of collectives and returns values identical on every rank.

How :func:`calculate` talks to the other ranks:

1. One ``all_reduce(SUM)`` of a float64 buffer of fixed length: a signature of
   what this rank is reducing (kinds, shapes, result types), the byte size of
   this rank's List/Cat payload, and the first ``INLINE`` sum-like numbers.
   Its length never depends on the accumulators, so ranks that diverge cannot
   crash gloo (a length mismatch aborts the process) and every rank sees the
   disagreement. Sums that do not fit inline go in one more ``all_reduce``.
2. One ``all_reduce(MAX)`` for all Max/Min states (Min as max of -x), if any.
   The running extremes skip NaN and a NaN count rides in the sums: a MAX
   all-reduce (gloo's) keeps a NaN only when rank 0 holds it.
3. One ``all_gather`` of a byte buffer for all List/Cat states, if any.

The Python work per accumulator is kept small, because it is what a
``calculate()`` of many scalars costs beyond the collective: specs and
contributions are cached while states keep their shapes, a call that repeats
the last one (the same list of the same accumulators, states and group) is
recognised by identity and reuses its plan, whose sum states live side by
side in one tensor (one copy fills the buffer), and runs of accumulators of one kind and settings (Sum,
Mean, Accuracy, F1, MSE, ...) are finished in one batched tensor pass.
Collections (:class:`~distlearn.metrics.Metrics`) are expanded into their
members, so they ride in the same collectives.

Which device reduces: the states' device when the group's backend reduces
there (``"cuda:nccl,cpu:gloo"`` keeps CUDA states on CUDA), else the host for
gloo/mpi, else the rank's accelerator (the current device once set, else
LOCAL_RANK's).

A rank that saw no data does not know its states' shapes. When signatures
differ, the ranks exchange their signatures (``all_gather_object``) and either
agree on shapes (empty states become zeros of the right shape, growable states
such as an F1 confusion matrix are padded to the largest) or raise
:class:`DivergenceError` on every rank, saying what differs.

Modules: :mod:`.protocol` (what calculate() asks of an accumulator),
:mod:`.tensor` (float64 tensor states), :mod:`.aggregates` (Sum, Mean, Max,
Min), :mod:`.sequences` (List, Cat), :mod:`.excluding` (Except),
:mod:`.collective` (calculate() itself) with :mod:`.devices`,
:mod:`.signature`, :mod:`.wire`, :mod:`.plan` and :mod:`.split` (the one
place reduced buffers become results).
"""

from __future__ import annotations

from .aggregates import Max, Mean, Min, Sum
from .collective import calculate
from .excluding import Except
from .protocol import Accumulator, DivergenceError, PeerLostError
from .sequences import Cat, List

__all__ = [
    "Accumulator",
    "Cat",
    "DivergenceError",
    "Except",
    "List",
    "Max",
    "Mean",
    "Min",
    "PeerLostError",
    "Sum",
    "calculate",
]
