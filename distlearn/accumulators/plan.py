"""The plan calculate() reuses for repeated calls of sum-only, batchable accumulators."""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.distributed as dist

from .signature import call_signature
from .split import runs_of, split_results
from .wire import INLINE, one_vector


class Plan:
    """How to reduce one call pattern of sum-only, batchable accumulators (the common case).

    Built once per pattern (the same accumulators with the same cached specs,
    keys, group and device) and reused while the pattern repeats, so a call
    costs one stack of the states, one concatenation and one all_reduce of the
    same fixed-length buffer :func:`first_collective` sends (ranks on this path
    and ranks on the general one stay compatible), then one batched finish per
    run of accumulators of one kind. The results are those of the general path,
    bit for bit: the same sums in the same order, split by the same :func:`split_results`.
    """

    def __init__(self, accs, keys, specs, group, world, device, contributions) -> None:
        self.accs, self.keys, self.specs = tuple(accs), keys, tuple(specs)
        self.group, self.world, self.device = group, world, device
        self.contributions = tuple(contributions)
        self.tensors = [t for c in contributions for t in c.sums]
        self.signature = call_signature(keys, self.specs)
        self.expected = [world * v for v in self.signature]
        header = self.signature + [0.0] * world  # no List/Cat: every rank's byte size is 0
        self.header = torch.tensor(header, dtype=torch.float64, device=device)
        self.count = sum(t.numel() for t in self.tensors)
        # One buffer for every call of this pattern: states are stacked straight into it (no
        # allocation, no concatenation). Values handed out never alias it (split_results copies it first).
        self.buffer = torch.zeros(len(header) + INLINE, dtype=torch.float64, device=device)
        self.stackable = all(t.dim() == 0 and t.dtype == torch.float64 and t.device == device for t in self.tensors)
        self.runs = runs_of(accs, specs, contributions)

    def matches(self, accs, keys, specs, group, world, device) -> bool:
        return (
            len(accs) == len(self.accs)
            and group is self.group
            and world == self.world
            and device == self.device
            and keys == self.keys
            and all(map(operator.is_, accs, self.accs))
            and all(map(operator.is_, specs, self.specs))
        )

    def run(self, accs, specs, group) -> list[Any] | None:
        """The global values, or None when the ranks' signatures differ."""
        buffer, start = self.buffer, len(self.header)
        buffer[:start] = self.header
        if self.stackable:
            torch.stack(self.tensors, out=buffer[start : start + self.count])
        else:
            buffer[start : start + self.count] = one_vector(self.tensors, self.device)
        buffer[start + self.count :] = 0.0
        dist.all_reduce(buffer, group=group)
        if buffer[: len(self.signature)].tolist() != self.expected:
            return None
        sums = buffer[start : start + self.count]
        return split_results(accs, specs, self.contributions, self.runs, sums, reused=True)


LAST_PLAN: list[Plan | None] = [None]  # the last call pattern's plan


def plan_for(accs, keys, specs, group, world, device) -> Plan | None:
    """The plan for this call pattern (cached), or None when it needs the general path."""
    plan = LAST_PLAN[0]
    if plan is not None and plan.matches(accs, keys, specs, group, world, device):
        return plan
    if any(acc._growable for acc in accs):  # specs made afresh each call: nothing to reuse
        return None
    contributions = [acc._contribute(spec) for acc, spec in zip(accs, specs)]
    if any(c.maxes or c.blob is not None or not c.sums for c in contributions):
        return None
    if sum(t.numel() for c in contributions for t in c.sums) > INLINE:
        return None
    # Only states the accumulators keep (a cached contribution) may be planned on: others
    # (padded or neutral states made for this call) would not be the same next time.
    if any(getattr(acc, "_spec_cache", (None,) * 4)[3] is not c for acc, c in zip(accs, contributions)):
        return None
    plan = Plan(accs, keys, specs, group, world, device, contributions)
    LAST_PLAN[0] = plan
    return plan
