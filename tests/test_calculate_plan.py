"""calculate()'s cached plan for repeated calls of sum-only accumulators: same results as the general path."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from distlearn.accumulators import DivergenceError, Mean, Sum, calculate, collective
from distlearn.accumulators.plan import LAST_PLAN
from distlearn.metrics import Accuracy


def _general_path(fn):
    plan_for = collective.plan_for
    collective.plan_for = lambda *args: None
    try:
        return fn()
    finally:
        collective.plan_for = plan_for


def repeated_calls(rank, world):
    means = [Mean() for _ in range(64)]
    sums = [Sum() for _ in range(4)]
    metrics = [Accuracy(), Accuracy()]  # (F1 with num_classes=None is growable: never planned)
    accs = means + sums + metrics
    out = []
    for step in range(3):  # the plan is made on the first call and reused after
        for i, m in enumerate(means):
            m(0.1 * (rank + 1) * (i + 1) + step / 3, weight=rank + step + 1)
        for s in sums:
            s(torch.tensor(rank + 0.25 * step, dtype=torch.float64))
        y = torch.tensor([0, 1, 2, rank % 3])
        for metric in metrics:
            metric(y_pred=(y + step) % 3, y_true=y)
        planned = calculate(accs)
        assert LAST_PLAN[0] is not None and LAST_PLAN[0].accs[0] is means[0]
        general = _general_path(lambda: calculate(accs))
        out.append((planned, general))
    for m in means:
        m.reset()
    means[0](float(rank))
    out.append(calculate(means[:1]))
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_planned_calls_give_the_general_paths_results_bit_for_bit(dist_pool, world):
    for per_rank in dist_pool.run(repeated_calls, world):
        for planned, general in per_rank[:3]:
            assert [float(v) for v in planned] == [float(v) for v in general]  # exact, not approximate
        assert per_rank[3] == [sum(range(world)) / world]
    # every rank got the same values
    first = dist_pool.run(repeated_calls, world)
    assert all(r[0][0] == first[0][0][0] for r in first)


def nan_and_empty(rank, world):
    means = [Mean() for _ in range(8)]
    for m in means:
        m(float(rank))
    calculate(means)  # the plan
    means[3](math.nan if rank == world - 1 else 1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = calculate(means)
    return values, [str(w.message) for w in caught]


def test_a_nan_after_the_plan_was_made_propagates(dist_pool):
    for values, _ in dist_pool.run(nan_and_empty, 2):
        assert math.isnan(values[3])
        assert values[0] == 0.5


def one_rank_planned(rank, world):
    means = [Mean() for _ in range(5)]
    if rank == 0:  # rank 0 reuses its plan; rank 1 has no data and takes the general path
        for m in means:
            m(2.0)
    first = calculate(means)
    if rank == 0:
        for m in means:
            m(4.0)
    return first, calculate(means)


def test_planned_and_general_ranks_agree(dist_pool):
    for first, second in dist_pool.run(one_rank_planned, 2):
        assert first == [2.0] * 5 and second == [3.0] * 5


def diverge_after_plan(rank, world):
    accs = [Mean() for _ in range(4)]
    for a in accs:
        a(1.0)
    calculate(accs)
    if rank == 1:
        accs[2] = Sum()
        accs[2](1.0)
    try:
        calculate(accs)
    except DivergenceError as e:
        return str(e)
    return None


def test_divergence_after_a_plan_raises_on_every_rank(dist_pool):
    assert all(m and "accumulator 2" in m for m in dist_pool.run(diverge_after_plan, 2))


def planned_tensor_results(rank, world):
    total = Sum()
    total(torch.full((3,), float(rank + 1), dtype=torch.float64))
    first = calculate([total])[0]  # the plan is made and run
    second = calculate([total])[0]  # the plan reused
    total(torch.ones(3, dtype=torch.float64))
    third = calculate([total])[0]
    return first.tolist(), second.tolist(), third.tolist()


def test_planned_tensor_results_are_not_overwritten_by_the_next_call(dist_pool):
    for first, second, third in dist_pool.run(planned_tensor_results, 2):
        assert first == second == [3.0] * 3 and third == [5.0] * 3


def repeated_plain_list_skips_specs(rank, world):
    from distlearn.accumulators.tensor import TensorAccumulator

    means = [Mean() for _ in range(8)]
    for m in means:
        m(float(rank))
    calculate(means)  # the plan is made
    counted = []
    spec = TensorAccumulator._spec
    TensorAccumulator._spec = lambda self: counted.append(self) or spec(self)
    try:
        values = calculate(means)  # the plan repeated: no spec asked, no flattening
    finally:
        TensorAccumulator._spec = spec
    return len(counted), values


def test_a_repeated_plain_list_is_checked_without_asking_for_specs(dist_pool):
    for count, values in dist_pool.run(repeated_plain_list_skips_specs, 2):
        assert count == 0 and values == [0.5] * 8


def changes_between_planned_calls(rank, world):
    a, b, c = Sum(), Mean(), Mean()
    a(1)
    b(float(rank))
    c(2.0)
    out = [calculate([a, b, c])]
    a(0.5)  # int -> float under the same states: the result's type changes
    out.append(calculate([a, b, c]))
    b.reset()
    b(10.0 * (rank + 1))  # new states after a reset
    out.append(calculate([a, b, c]))
    saved = c.state_dict()
    c(4.0)
    out.append(calculate([a, b, c]))
    c.load_state_dict(saved)  # new states from a state dict (the plan's views were cloned)
    out.append(calculate([a, b, c]))
    out.append(calculate([b, a]))  # another pattern sharing accumulators, then the first again
    out.append(calculate((a, b, c)))
    a(1.0)
    out.append(calculate([a, b, c]))
    return out


def test_changes_between_planned_calls_are_seen(dist_pool):
    for out in dist_pool.run(changes_between_planned_calls, 2):
        assert out[0] == [2, 0.5, 2.0] and type(out[0][0]) is int
        assert out[1] == [3.0, 0.5, 2.0] and type(out[1][0]) is float
        assert out[2] == [3.0, 15.0, 2.0]
        assert out[3] == [3.0, 15.0, 3.0]
        assert out[4] == [3.0, 15.0, 2.0]
        assert out[5] == [15.0, 3.0]
        assert out[6] == [3.0, 15.0, 2.0]
        assert out[7] == [5.0, 15.0, 2.0]
