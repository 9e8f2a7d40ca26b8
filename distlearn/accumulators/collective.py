"""calculate(): the only collective, over any number of accumulators and metrics (collections expanded)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch.distributed as dist

from .devices import comm_device
from .plan import Call, plan_for
from .protocol import Accumulator, DivergenceError, PeerLostError
from .signature import reconcile
from .split import runs_of, split_results
from .wire import first_collective, gather_bytes, one_vector


def calculate(
    accumulators: Sequence[Accumulator] | Mapping[str, Accumulator],
    group: dist.ProcessGroup | None = None,
) -> Any:
    """Global values of many accumulators and metrics in a few coalesced collectives.

    A collective: every rank in ``group`` must call it with the same kinds of
    accumulators in the same order. Local states are left unchanged.

    Args:
        accumulators: a list or dict of accumulators (metrics included).
        group: the process group; the default group when ``None``. With no
            initialized group (one process) the values are the local ones.

    Returns:
        The global values in the same structure (list or dict), identical on
        every rank.

    Raises:
        DivergenceError: on every rank, when ranks passed different
            accumulators, kinds or shapes.
        PeerLostError: when another process ended, or did not call
            ``calculate()`` within the group's timeout (``build_accelerator(timeout_s=...)``,
            the CLI's ``run.timeout_s``); the backend's error is its ``__cause__``.
        RuntimeError: on every rank, when Accelerate was set up with another
            number of processes than the default group holds (e.g. a plain
            ``Accelerator()`` under ``torchrun`` on a machine without a GPU).
    """
    try:
        return _calculate(accumulators, group)
    except (DivergenceError, PeerLostError):
        raise
    except RuntimeError as exc:
        if not _from_backend(exc):
            raise
        raise PeerLostError(
            f"calculate() waited for another process that ended or did not arrive within the group's timeout "
            f"({_timeout_text(group)}): every process must call calculate() the same number of times and "
            f"stay up until the last one. The backend said: {str(exc).strip()}"
        ) from exc


def _from_backend(exc: RuntimeError) -> bool:
    """A collective's failure (gloo's, NCCL's), not an error of this module or of an accumulator."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return any(mark in text for mark in ("gloo/", "Connection closed", "Connection reset", "Timed out", "NCCL"))


def _timeout_text(group: dist.ProcessGroup | None) -> str:
    try:
        pg = group if group is not None else dist.distributed_c10d._get_default_group()
        seconds = pg._get_backend(dist.distributed_c10d._get_pg_default_device(pg)).options._timeout.total_seconds()
        return f"{seconds:g} s"
    except Exception:  # noqa: BLE001 - private torch API: the message goes without the figure
        return "the group's timeout"


def _calculate(
    accumulators: Sequence[Accumulator] | Mapping[str, Accumulator],
    group: dist.ProcessGroup | None,
) -> Any:
    plan = plan_for(accumulators, group)  # the common case first: the last call again, checked cheaply
    if plan is not None:
        accs, rebuild, keys, world, device = plan.accs, list, None, plan.world, plan.device
        if group is None:
            _check_accelerate_world(world)
    else:
        accs, rebuild, keys = _flatten(accumulators)
        distributed = dist.is_available() and dist.is_initialized()
        world = dist.get_world_size(group) if distributed else 1
        specs = [acc._spec() for acc in accs]
        if world == 1:
            return rebuild(_local_results(accs, specs))
        if group is None:
            _check_accelerate_world(world)
        device = comm_device(group, accs)
        plan = plan_for(accumulators, group, Call(accs, keys, specs, world, device))
    if plan is not None:
        results = plan.run(group)
        if results is not None:
            return rebuild(results)
        first = None  # signatures differ (the same first collective as below was made)
        specs = [acc._spec() for acc in accs]
    else:
        first, contributions, blob = first_collective(accs, keys, specs, group, world, device)
    if first is None:  # signatures differ: agree on shapes or raise on every rank
        specs = _agreed_specs(accs, keys, specs, group, world)
        first, contributions, blob = first_collective(accs, keys, specs, group, world, device)
        if first is None:
            raise DivergenceError("calculate(): ranks still disagree after exchanging signatures")
    sums, sizes = first

    maxes = [t for c in contributions for t in c.maxes]
    max_flat = one_vector(maxes, device)
    if max_flat.numel():
        dist.all_reduce(max_flat, op=dist.ReduceOp.MAX, group=group)

    blobs = None
    if blob is not None:
        blobs = gather_bytes(blob, sizes, group, device)

    runs = runs_of(accs, specs, contributions)
    return rebuild(split_results(accs, specs, contributions, runs, sums, max_flat, blobs))


def _agreed_specs(accs: list[Accumulator], keys: list[str] | None, specs: list[tuple], group, world: int) -> list[tuple]:
    """The specs every rank agrees on, from every rank's keys and specs (one ``all_gather_object``).

    Raises:
        DivergenceError: on every rank, when the ranks' keys or specs cannot agree.
    """
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, (keys, specs), group=group)
    if any(other_keys != keys for other_keys, _ in gathered):
        described = "; ".join(f"rank {r}: {k}" for r, (k, _) in enumerate(gathered))
        raise DivergenceError(f"calculate(): ranks passed dicts with different keys or key order ({described})")
    return reconcile([other_specs for _, other_specs in gathered], accs)


def _check_accelerate_world(world: int) -> None:
    """Refuse to reduce over ranks that each trained alone: Accelerate's process count is not the group's.

    Plain ``torchrun --nproc_per_node 2`` on a machine without a GPU gives every rank an
    Accelerator of one process, which hands it all the data, while the process group
    has 2: the sums would count every sample twice. Reads Accelerate's state only when
    it was imported and set up (no import, no collective); every rank sees the same.
    """
    state = sys.modules.get("accelerate.state")
    partial = getattr(state, "PartialState", None)
    n = getattr(partial, "_shared_state", {}).get("num_processes")
    if n is not None and n != world:
        raise RuntimeError(
            f"calculate(): Accelerate sees {n} process(es) but the process group holds {world}: each rank went "
            "through all the data alone, so every sample would be counted once per rank. On a machine without a "
            "GPU, build the Accelerator with distlearn.accelerator.build_accelerator() (or Accelerator(cpu=True), "
            "or launch with ACCELERATE_USE_CPU=1)."
        )


def _local_results(accs: Sequence[Accumulator], specs: list[tuple]) -> list[Any]:
    return [acc._local(spec) for acc, spec in zip(accs, specs)]


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


def _flatten(
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
