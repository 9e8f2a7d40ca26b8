"""The reduced buffers split into results: runs of accumulators, finished together where they can be."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .protocol import UNSET, Accumulator, Contribution
from .wire import unpack_segments


@dataclass(frozen=True)
class Run:
    """Accumulators ``first`` to ``end`` (exclusive) in calculate()'s order, finished together when they can be."""

    first: int
    end: int
    batch: type | None  # the class whose _batch_values finishes the whole run; None: one by one
    width: int  # sum-like numbers per accumulator


def runs_of(accs: Sequence[Accumulator], specs: Sequence[tuple], contributions: Sequence[Contribution]) -> list[Run]:
    """Runs of neighbours that share a :func:`_batch_key`; an accumulator without one is a run of its own."""
    runs = []
    i = 0
    while i < len(accs):
        key = _batch_key(accs[i], specs[i], contributions[i])
        j = i + 1
        while key is not None and j < len(accs) and _batch_key(accs[j], specs[j], contributions[j]) == key:
            j += 1
        width = sum(t.numel() for t in contributions[i].sums)
        runs.append(Run(i, j, type(accs[i]) if key is not None else None, width))
        i = j
    return runs


def split_results(
    accs: Sequence[Accumulator],
    specs: Sequence[tuple],
    contributions: Sequence[Contribution],
    runs: Sequence[Run],
    sums: torch.Tensor,
    maxes: torch.Tensor | None = None,
    blobs: list[bytes] | None = None,
    reused: bool = False,
) -> list[Any]:
    """The global values of ``accs`` from the reduced buffers: the one place buffers become results.

    One split per buffer (views, no copies) instead of a slice per state; a run of
    scalar accumulators of one class is finished in one tensor op, or one by one
    when its class declines (NaN counts to report, empty results to warn about).

    Args:
        accs, specs, contributions: the accumulators, the specs the ranks agreed on, what each contributed.
        runs: :func:`runs_of` the same accumulators.
        sums: the reduced sum-like numbers, in contribution order.
        maxes: the reduced max-like numbers, in contribution order; None when there are none.
        blobs: every rank's gathered bytes; None when no accumulator gathers.
        reused: ``sums`` is a buffer the next call writes again: copied before results may be views of it.

    Returns:
        One value per accumulator, in order.
    """
    max_parts = iter(maxes.split([t.numel() for c in contributions for t in c.maxes]) if maxes is not None else ())
    gathered = _gathered_per_accumulator(contributions, blobs)
    results: list[Any] = []
    offset = 0
    for run in runs:
        count = run.end - run.first
        if run.batch is not None:
            block = sums[offset : offset + count * run.width].view(count, run.width)
            values = run.batch._batch_values(accs[run.first : run.end], specs[run.first : run.end], block)
            if values is not None:  # Python numbers: nothing refers to the buffer
                results.extend(values)
                offset += count * run.width
                continue
        if reused:
            sums, reused = sums.clone(), False
        for k in range(run.first, run.end):
            c = contributions[k]
            acc_sums = []
            for t in c.sums:
                acc_sums.append(sums[offset : offset + t.numel()].view(t.shape))
                offset += t.numel()
            acc_maxes = [next(max_parts).view(t.shape) for t in c.maxes]
            acc_blobs = next(gathered) if c.blob is not None else None
            results.append(accs[k]._finish(specs[k], acc_sums, acc_maxes, acc_blobs))
    return results


def _gathered_per_accumulator(contributions: Sequence[Contribution], blobs: list[bytes] | None) -> Iterator[list[bytes]]:
    """Each gathering accumulator's bytes from every rank, in order (ranks packed theirs into one blob each)."""
    if blobs is None:
        return iter(())
    count = sum(c.blob is not None for c in contributions)
    per_rank = [unpack_segments(blob, count) for blob in blobs]
    return (list(column) for column in zip(*per_rank))


def _batch_key(acc: Accumulator, spec: tuple, c: Contribution) -> Any:
    """What scalar accumulators share to be finished together, or None (finish alone).

    Kept on the contribution, which a TensorAccumulator reuses while its states stay the same.
    """
    if c.batch_key is UNSET:
        c.batch_key = _new_batch_key(acc, spec, c)
    return c.batch_key


def _new_batch_key(acc: Accumulator, spec: tuple, c: Contribution) -> Any:
    config = getattr(acc, "_batch_config", None)
    if config is not None:  # metrics whose _compute takes a leading batch dimension
        if c.maxes or c.blob is not None or not c.sums:
            return None
        key = config()
        return None if key is None else (type(acc), spec, key)
    if c.maxes or c.blob is not None or not c.sums or spec[1] not in ("int", "float"):
        return None
    if getattr(type(acc), "_batch_values", None) is None or any(t.dim() for t in c.sums):
        return None
    return type(acc), spec[1], len(c.sums), getattr(acc, "nan_strategy", None)
