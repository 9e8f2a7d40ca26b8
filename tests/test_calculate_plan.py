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
