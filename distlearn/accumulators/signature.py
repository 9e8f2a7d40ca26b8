"""What ranks compare before they reduce: signatures of their specs, and agreement on specs."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from typing import Any

import torch

from .protocol import Accumulator, DivergenceError


_HASH_CHUNKS = 3  # 3 x 20 bits of signature hash; squares stay exact in float64


def call_signature(keys: Sequence[str] | None, specs: Sequence[tuple]) -> list[float]:
    """The numbers a rank sums with the others to check that every rank reduces the same keys and specs."""
    return list(_signature((None if keys is None else tuple(keys), tuple(specs))))


def _signature(specs: Any) -> list[float]:
    try:
        return _cached_signature(specs)
    except TypeError:  # an unhashable spec: compute it afresh
        return _signature_of(specs)


@functools.lru_cache(maxsize=256)
def _cached_signature(specs: Any) -> list[float]:
    return _signature_of(specs)


def _signature_of(specs: Any) -> list[float]:
    digest = int.from_bytes(hashlib.blake2b(repr(specs).encode(), digest_size=8).digest(), "big")
    chunks = [float((digest >> (20 * k)) & 0xFFFFF) for k in range(_HASH_CHUNKS)]
    # Summed over ranks, sum(s) == n*s and sum(s*s) == n*s*s on a rank iff all ranks
    # have the same s (zero variance), so every rank detects any difference.
    return [v for s in chunks for v in (s, s * s)]


def signature_agrees(reduced: torch.Tensor, mine: list[float], world: int) -> bool:
    return all(reduced[i].item() == world * mine[i] for i in range(len(mine)))


def reconcile(all_specs: list[list[tuple]], accs: Sequence[Accumulator]) -> list[tuple]:
    """Agree on one spec per accumulator from every rank's specs, or raise DivergenceError."""
    counts = [len(specs) for specs in all_specs]
    if len(set(counts)) > 1:
        described = "; ".join(f"rank {r}: {[spec[0] for spec in specs]}" for r, specs in enumerate(all_specs))
        raise DivergenceError(f"calculate(): ranks passed different numbers of accumulators ({described})")
    agreed = []
    for i, acc in enumerate(accs):
        column = [specs[i] for specs in all_specs]
        described = "; ".join(f"rank {r}: {spec}" for r, spec in enumerate(column))
        if len({spec[0] for spec in column}) > 1:
            raise DivergenceError(f"calculate(): accumulator {i} differs in kind across ranks ({described})")
        if len(column[0]) == 2:  # List/Cat: agree on the device type results come back on
            types = {spec[1] for spec in column} - {"cpu"}
            agreed.append((column[0][0], types.pop() if len(types) == 1 else "cpu"))
            continue
        kinds = {spec[1] for spec in column if spec[1] is not None}
        if kinds == {"int", "float"}:  # Python ints on some ranks, floats on others
            kinds = {"float"}
        if len(kinds) > 1:
            raise DivergenceError(f"calculate(): accumulator {i} ({column[0][0]}) got different value types across ranks ({described})")
        shapes = {spec[2] for spec in column if spec[2] is not None}
        if len(shapes) > 1 and not acc._growable:
            raise DivergenceError(f"calculate(): accumulator {i} ({column[0][0]}) has different shapes across ranks ({described})")
        if len(shapes) > 1:  # growable: pad every state to the largest extent per dim
            names = [name for name, _ in next(iter(shapes))]
            shapes = {
                tuple((n, tuple(max(dims) for dims in zip(*(dict(s)[n] for s in shapes)))) for n in names)
            }
        agreed.append((column[0][0], next(iter(kinds), None), next(iter(shapes), None)))
    return agreed
