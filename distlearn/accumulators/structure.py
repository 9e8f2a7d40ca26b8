"""The caller's structure: collections expanded into their members, and the results put back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .protocol import Accumulator


_LEAF = Accumulator._members  # the base class's: an accumulator that is no collection


def _expand(acc: Any, path: str, flat: list[Accumulator], names: list[str]) -> Any:
    """Put ``acc`` (or a collection's members, recursively) into ``flat``; return how to rebuild its result."""
    if not isinstance(acc, Accumulator):
        raise TypeError(f"calculate(): expected accumulators, got {type(acc).__name__} at {path or 'the top'}")
    members = acc._members()
    if members is None:
        flat.append(acc)
        names.append(path)
        return len(flat) - 1
    return acc, {key: _expand(member, f"{path}.{key}", flat, names) for key, member in members.items()}


def _assembled(node: Any, values: list[Any]) -> Any:
    if isinstance(node, int):
        return values[node]
    acc, children = node
    return acc._assemble({key: _assembled(child, values) for key, child in children.items()})


def flatten(
    accumulators: Sequence[Accumulator] | Mapping[str, Accumulator],
) -> tuple[list[Accumulator], Any, list[str] | None]:
    """The accumulators (collections expanded), a function that rebuilds the caller's structure, and names.

    The names (dict keys and collection member keys) are part of the signature
    the ranks compare, so dicts or collections keyed differently never mix values.
    """
    if isinstance(accumulators, Accumulator):
        raise TypeError("calculate() takes a list or dict of accumulators; for one, call acc.calculate()")
    keyed = isinstance(accumulators, Mapping)
    if not keyed and all(getattr(type(acc), "_members", None) is _LEAF for acc in accumulators):
        return list(accumulators), list, None  # a plain list of plain accumulators: nothing to expand
    items = list(accumulators.items()) if keyed else [(str(i), a) for i, a in enumerate(accumulators)]
    flat: list[Accumulator] = []
    names: list[str] = []
    nodes = [_expand(acc, key, flat, names) for key, acc in items]
    if keyed:
        keys = [key for key, _ in items]
        return flat, lambda values: dict(zip(keys, (_assembled(n, values) for n in nodes))), names
    if all(isinstance(node, int) for node in nodes):
        return flat, list, None
    return flat, lambda values: [_assembled(n, values) for n in nodes], names
