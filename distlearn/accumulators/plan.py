"""The plan calculate() reuses for repeated calls of sum-only, batchable accumulators."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

from .devices import comm_device
from .protocol import Accumulator
from .signature import call_signature
from .split import runs_of, split_results
from .tensor import TensorAccumulator
from .wire import INLINE, one_vector

_STATES, _KIND = operator.attrgetter("_states"), operator.attrgetter("_kind")


class Call(NamedTuple):
    """One call of calculate(), flattened: what a new plan is made from."""

    accs: list[Accumulator]
    keys: list[str] | None
    specs: list[tuple]
    world: int
    device: torch.device


class Plan:
    """How to reduce one call pattern of sum-only, batchable accumulators (the common case).

    Built once per pattern (the same accumulators with the same cached specs,
    keys, group and device) and reused while the pattern repeats, so a call
    costs one copy of the states into one buffer and one all_reduce of the
    same fixed-length buffer :func:`first_collective` sends (ranks on this path
    and ranks on the general one stay compatible), then one batched finish per
    run of accumulators of one kind. The results are those of the general path,
    bit for bit: the same sums in the same order, split by the same :func:`split_results`.
    """

    def __init__(self, call: Call, group: dist.ProcessGroup | None, contributions: Sequence[Any], plain: bool) -> None:
        self.accs, self.keys, self.specs = tuple(call.accs), call.keys, tuple(call.specs)
        self.group, self.world, self.device = group, call.world, call.device
        self.default_group = _default_group() if group is None else None
        self.plain = plain  # the caller passed a plain list of these accumulators (no dict, no collection)
        self.states, self.kinds = [acc._states for acc in self.accs], [acc._kind for acc in self.accs]
        self.contributions = tuple(contributions)
        self.signature = call_signature(call.keys, self.specs)
        self.expected = [call.world * v for v in self.signature]
        header = self.signature + [0.0] * call.world  # no List/Cat: every rank's byte size is 0
        self.header = torch.tensor(header, dtype=torch.float64, device=call.device)
        self.start = len(header)
        # One buffer for every call of this pattern; values handed out never alias it (split_results
        # copies it first). The states live side by side in one tensor: one copy fills the buffer.
        self.buffer = torch.zeros(len(header) + INLINE, dtype=torch.float64, device=call.device)
        self.states_flat = _gathered_states(self.accs, contributions, call.device)
        self.tensors = [t for c in contributions for t in c.sums]
        self.end = self.start + sum(t.numel() for t in self.tensors)
        self.host = None
        if self.states_flat is not None and call.device.type == "cpu":  # numpy: a tenth of a tensor op's cost
            self.host = self.buffer.numpy(), self.header.numpy(), self.states_flat.numpy()
        self.runs = runs_of(call.accs, call.specs, contributions)

    def repeats(self, accumulators: Any, group: dist.ProcessGroup | None) -> bool:
        """Whether this call is this plan's again: a plain list of the same accumulators, states and group.

        The cheap check of the common case, in place of flattening the call and asking every
        accumulator for its spec: the same states dict and result kind give the same spec
        (a TensorAccumulator's spec is cached on exactly these, see ``TensorAccumulator._spec``).
        """
        accs = self.accs
        return (
            self.plain
            and type(accumulators) in (list, tuple)
            and len(accumulators) == len(accs)
            and group is self.group
            and (group is not None or _default_group() is self.default_group)
            and all(map(operator.is_, accumulators, accs))
            and all(map(operator.is_, map(_STATES, accs), self.states))
            and list(map(_KIND, accs)) == self.kinds
            and (self.device.type == "cpu" or comm_device(group, accs) == self.device)
        )

    def matches(self, call: Call, group: dist.ProcessGroup | None) -> bool:
        accs, specs = call.accs, call.specs
        return (
            len(accs) == len(self.accs)
            and group is self.group
            and call.world == self.world
            and call.device == self.device
            and call.keys == self.keys
            and all(map(operator.is_, accs, self.accs))
            and all(map(operator.is_, specs, self.specs))
        )

    def run(self, group: dist.ProcessGroup | None) -> list[Any] | None:
        """The global values, or None when the ranks' signatures differ."""
        buffer, start, end = self.buffer, self.start, self.end
        if self.host is not None:
            host, header, states = self.host
            host[:start] = header
            host[start:end] = states
        else:
            buffer[:start] = self.header
            buffer[start:end] = self.states_flat if self.states_flat is not None else one_vector(self.tensors, self.device)
        dist.all_reduce(buffer, group=group)
        head = (buffer if self.host is None else self.host[0])[: len(self.signature)]
        if head.tolist() != self.expected:
            buffer[end:] = 0.0  # a diverging rank's numbers may have landed past ours
            return None
        return split_results(self.accs, self.specs, self.contributions, self.runs, buffer[start:end], reused=True)


def _gathered_states(accs: Sequence[TensorAccumulator], contributions: Sequence[Any], device: torch.device) -> torch.Tensor | None:
    """One float64 tensor on ``device`` holding every accumulator's sum states, which become views of it.

    None (each call then gathers the states afresh) when a state is of another dtype or on
    another device than the reduction's (CUDA states reduced by gloo on the host).
    """
    if not all(t.dtype == torch.float64 and t.device == device for c in contributions for t in c.sums):
        return None
    sizes = [sum(t.numel() for t in c.sums) for c in contributions]
    flat = torch.zeros(sum(sizes), dtype=torch.float64, device=device)
    offset = 0
    for acc, size in zip(accs, sizes):
        acc._keep_sums_in(flat[offset : offset + size])
        offset += size
    return flat


LAST_PLAN: list[Plan | None] = [None]  # the last call pattern's plan


def _default_group() -> dist.ProcessGroup | None:
    return dist.group.WORLD  # a new object whenever the default group is made again


def plan_for(accumulators: Any, group: dist.ProcessGroup | None, call: Call | None = None) -> Plan | None:
    """The plan for this call, or None for the general path.

    Without ``call``: the last plan when this call repeats it exactly (:meth:`Plan.repeats`),
    checked before the call is flattened. With ``call`` (the flattened call): the last plan
    when it matches, else a new one when every accumulator can be planned.
    """
    plan = LAST_PLAN[0]
    if call is None:
        return plan if plan is not None and plan.repeats(accumulators, group) else None
    if plan is not None and plan.matches(call, group):
        return plan
    if any(acc._growable or type(acc)._spec is not TensorAccumulator._spec for acc in call.accs):
        return None  # specs made afresh each call, or not cached on the states: nothing to reuse
    contributions = [acc._contribute(spec) for acc, spec in zip(call.accs, call.specs)]
    if any(c.maxes or c.blob is not None or not c.sums for c in contributions):
        return None
    if sum(t.numel() for c in contributions for t in c.sums) > INLINE:
        return None
    # Only states the accumulators keep (a cached contribution) may be planned on: others
    # (padded or neutral states made for this call) would not be the same next time.
    if any(getattr(acc, "_spec_cache", (None,) * 4)[3] is not c for acc, c in zip(call.accs, contributions)):
        return None
    plain = type(accumulators) in (list, tuple) and call.keys is None and len(accumulators) == len(call.accs)
    plan = Plan(call, group, contributions, plain and all(map(operator.is_, accumulators, call.accs)))
    LAST_PLAN[0] = plan
    return plan
