"""Exactness holes: NaN and ±inf on any rank, the NaN policy, host-side weights, devices, in-place resets.

Every reduction is checked in real gloo groups of 1-4 ranks against numpy on
the concatenated data.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from distlearn.accumulators import (
    Cat,
    List,
    Max,
    Mean,
    Min,
    Sum,
    calculate,
)
from distlearn.accumulators.devices import choose_device
from distlearn.accumulators.signature import reconcile
from distlearn.metrics import MAE, MSE, R2, RMSE, Accuracy

SPECIAL = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e300, -1e300])
VALUE = st.one_of(SPECIAL, st.floats(-1e6, 1e6, allow_nan=False), st.integers(-(2**50), 2**50).map(float))


def reduce_special(rank, world, per_rank, weights, long):
    accs = {"sum": Sum(), "mean": Mean(), "wmean": Mean(), "max": Max(), "min": Min(), "cat": Cat(), "items": List()}
    for v, w in zip(per_rank[rank], weights[rank]):
        t = torch.tensor(v, dtype=torch.float64)
        accs["sum"](t), accs["mean"](t), accs["max"](t), accs["min"](t)
        accs["wmean"](t, weight=w)
        accs["items"](v)
    if per_rank[rank]:
        accs["cat"](torch.tensor(per_rank[rank], dtype=torch.float64))
    big = Sum()  # more than the inline part of the first collective, in the same calculate()
    big(torch.full((long,), float(rank + 1), dtype=torch.float64))
    accs["big"] = big
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return calculate(accs)


def same(found, expected, scale: float = 0.0) -> bool:
    """Equal, NaN and ±inf included; finite sums to rounding (1e-12 of the sum of magnitudes:
    float64 sums in another order may differ by that much, e.g. 1e300 - 1e300 + 1)."""
    found, expected = float(found), float(expected)
    if math.isnan(expected):
        return math.isnan(found)
    return found == expected or math.isclose(found, expected, rel_tol=1e-9, abs_tol=1e-9 + 1e-12 * scale)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    world=st.sampled_from([1, 2, 3, 4]),
    data=st.lists(st.lists(VALUE, max_size=5), min_size=4, max_size=4),
    weights=st.lists(st.lists(st.sampled_from([1, 2, 3, 0.5]), min_size=5, max_size=5), min_size=4, max_size=4),
)
def test_nan_and_inf_anywhere_give_what_one_process_gives(dist_pool, world, data, weights):
    per_rank, w = data[:world], weights[:world]
    everything = np.array([v for vs in per_rank for v in vs], dtype=np.float64)
    ws = np.array([x for vs, ws in zip(per_rank, w) for x in ws[: len(vs)]], dtype=np.float64)
    for result in dist_pool.run(reduce_special, world, per_rank, w, 4500):
        with np.errstate(all="ignore"):
            scale = float(np.abs(everything * np.maximum(ws, 1)).sum()) if np.isfinite(everything).all() else 0.0
            assert same(result["sum"], everything.sum(), scale)
            if len(everything):
                assert same(result["mean"], everything.mean(), scale / len(everything))
                assert same(result["wmean"], (everything * ws).sum() / ws.sum(), scale / ws.sum())
                assert same(result["max"], everything.max()) and same(result["min"], everything.min())
                np.testing.assert_array_equal(result["cat"].numpy(), everything)
            else:
                assert math.isnan(result["mean"]) and math.isnan(result["max"])
        step_major = [vs[i] for i in range(5) for vs in per_rank if i < len(vs)]
        assert all(same(a, b) for a, b in zip(result["items"], step_major, strict=True))
        assert torch.equal(result["big"], torch.full((4500,), world * (world + 1) / 2, dtype=torch.float64))


def nan_on_the_last_rank(rank, world, make):
    acc = make()
    values = [1.0, 2.0, 4.0] if rank != world - 1 else [5.0, math.nan]
    for v in values:
        acc(torch.tensor(v))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = float(acc.calculate())
    except ValueError as error:
        return "error", str(error)
    return value, [str(w.message) for w in caught]


@pytest.mark.parametrize("world", [2, 3])
def test_max_with_a_nan_on_another_rank_than_0_is_nan(dist_pool, world):
    # gloo's MAX keeps a NaN only from rank 0: [1, 2, 4 | 5, nan] used to give 4.0
    for make in (Max, Min):
        for value, _ in dist_pool.run(nan_on_the_last_rank, world, make):
            assert math.isnan(value)


def inf_and_minus_inf(rank, world):
    total, mean = Sum(), Mean()
    v = torch.tensor(math.inf if rank == 0 else -math.inf)
    total(v), mean(v)
    return calculate([total, mean])


def test_inf_on_one_rank_and_minus_inf_on_another_give_nan(dist_pool):
    for total, mean in dist_pool.run(inf_and_minus_inf, 2):
        assert math.isnan(total) and math.isnan(mean)


STRATEGY_CASES = [
    (Sum, {"ignore": 7.0 * 2 / 2, "warn": 7.0, "disable": math.nan}),
    (Mean, {"ignore": 7.0 / 3, "warn": 7.0 / 3, "disable": math.nan}),
    (Max, {"ignore": 4.0, "warn": 4.0, "disable": math.nan}),
    (Min, {"ignore": 1.0, "warn": 1.0, "disable": math.nan}),
]


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("make,expected", STRATEGY_CASES)
def test_nan_strategy_on_every_rank(dist_pool, world, make, expected):
    # ranks before the last hold [1, 2, 4], the last [5, nan]; world 2 is easiest to reason about
    def numpy_like(strategy):
        data = [1.0, 2.0, 4.0] * (world - 1) + [5.0, math.nan]
        kept = [v for v in data if not math.isnan(v)] if strategy in ("ignore", "warn") else data
        reduce = {Sum: np.sum, Mean: np.mean, Max: np.max, Min: np.min}[make]
        return float(reduce(np.array(kept)))

    from functools import partial

    for strategy in ("ignore", "warn", "disable", "error"):
        results = dist_pool.run(nan_on_the_last_rank, world, partial(make, nan_strategy=strategy))
        for value, detail in results:
            if strategy == "error":
                assert value == "error" and "1 NaN input value" in detail and "nan_strategy" in detail
            else:
                assert same(value, numpy_like(strategy))
                assert any("NaN" in m for m in detail) == (strategy == "warn")


def regression_nan(rank, world, strategy):
    metrics = {"mse": MSE(nan_strategy=strategy), "mae": MAE(nan_strategy=strategy),
               "rmse": RMSE(nan_strategy=strategy), "r2": R2(nan_strategy=strategy)}
    pred = torch.tensor([1.0, 2.0, math.nan if rank == world - 1 else 3.0])
    true = torch.tensor([1.5, 2.0, 2.0])
    for m in metrics.values():
        m(y_pred=pred, y_true=true)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return calculate(metrics)
    except ValueError as error:
        return str(error)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_nan_strategy_of_regression_metrics(dist_pool, world):
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    for message in dist_pool.run(regression_nan, world, "error"):
        assert isinstance(message, str) and "NaN" in message
    for values in dist_pool.run(regression_nan, world, "disable"):
        assert all(math.isnan(v) for v in values.values())
    pred = np.array([1.0, 2.0, 3.0] * (world - 1) + [1.0, 2.0])
    true = np.array([1.5, 2.0, 2.0] * (world - 1) + [1.5, 2.0])
    for values in dist_pool.run(regression_nan, world, "ignore"):
        assert values["mse"] == pytest.approx(mean_squared_error(true, pred))
        assert values["mae"] == pytest.approx(mean_absolute_error(true, pred))
        assert values["rmse"] == pytest.approx(math.sqrt(mean_squared_error(true, pred)))
        assert values["r2"] == pytest.approx(r2_score(true, pred))


def test_nan_strategy_is_checked():
    with pytest.raises(ValueError, match="nan_strategy must be one of"):
        Mean(nan_strategy="drop")
    with pytest.raises(ValueError, match="nan_strategy must be one of"):
        MSE(nan_strategy="nope")


# --------------------------------------------------------------------------- #
# No host data copied per update; states reset where they live
# --------------------------------------------------------------------------- #


class CopyCounter(TorchDispatchMode):
    """Counts ops that make a tensor from host data or move one between devices."""

    MAKERS = {"aten.lift_fresh.default", "aten.lift_fresh_copy.default", "aten.scalar_tensor.default"}

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        if name in self.MAKERS or (name == "aten._to_copy.default" and "device" in kwargs):
            self.found.append(name)
        elif name.startswith("aten.copy_") and args[0].device != args[1].device:
            self.found.append(name)
        return func(*args, **kwargs)


def test_mean_update_copies_no_host_data_to_the_device():
    value = torch.tensor(2.5, dtype=torch.float64)
    vector = torch.ones(3, dtype=torch.float32)
    mean, weighted, rows, total, numbers = Mean(), Mean(), Mean(), Sum(), Mean()
    mean(value), weighted(value, weight=7), rows(vector, weight=2.0), total(value), numbers(1.5)  # states exist
    with CopyCounter() as counter:
        for _ in range(5):
            mean(value)  # default weight=1
            weighted(value, weight=7)  # a Python weight
            rows(vector, weight=2.0)
            total(value)
            numbers.update(1.5, weight=3)  # Python numbers into scalar state
    assert counter.found == []
    assert mean.calculate() == pytest.approx(2.5) and numbers.calculate() == pytest.approx(1.5)
    assert weighted.calculate() == pytest.approx(2.5)


def test_the_old_weight_path_would_be_counted():
    # the counter does see a host tensor made per call (what Mean did with weight=1)
    with CopyCounter() as counter:
        torch.as_tensor(1.0).to(torch.float64)
    assert counter.found


def test_metric_reset_zeroes_states_in_place():
    accuracy = Accuracy()
    accuracy(y_pred=torch.tensor([1, 0]), y_true=torch.tensor([1, 1]))
    before = {n: s for n, s in accuracy._states.items()}
    accuracy.reset()
    assert all(accuracy._states[n] is s for n, s in before.items())
    assert all(float(s) == 0 for s in accuracy._states.values())
    accuracy(y_pred=torch.tensor([1]), y_true=torch.tensor([1]))
    assert accuracy.calculate() == 1.0


def test_mps_keeps_float64_states_on_the_host():
    from distlearn.accumulators.values import f64, state_device

    assert state_device(torch.device("mps")) == torch.device("cpu")
    # values move to the state's device before the float64 conversion (MPS has no float64)
    state = torch.zeros(2, dtype=torch.float64)
    value = torch.ones(2, dtype=torch.float16)
    assert f64(value, state).dtype == torch.float64
    from distlearn.accumulators.values import to_result_device

    result = torch.ones(2, dtype=torch.float64)
    assert to_result_device(result, torch.device("mps")) is result  # a float64 result stays on the host


# --------------------------------------------------------------------------- #
# Where calculate() reduces, where results come back
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "backend,states,expected",
    [
        ("gloo", torch.device("cpu"), "cpu"),
        ("gloo", None, "cpu"),
        ("nccl", torch.device("cuda", 3), "cuda:3"),
        ("nccl", torch.device("cpu"), "cuda:2"),  # CPU states on NCCL: the rank's own GPU (LOCAL_RANK)
        ("cuda:nccl,cpu:gloo", torch.device("cuda", 1), "cuda:1"),  # FSDP with CPU offload: still CUDA
        ("cuda:nccl,cpu:gloo", torch.device("cpu"), "cpu"),
        ("cuda:nccl,cpu:gloo", torch.device("cuda"), "cuda:2"),
        ("undefined", None, "cuda:2"),
    ],
)
def test_reduce_device_follows_the_backend_and_the_local_rank(monkeypatch, backend, states, expected):
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert choose_device(backend, states, "cuda", device_count=4, current=0) == torch.device(expected)


def test_a_set_current_device_wins_over_local_rank(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert choose_device("nccl", None, "cuda", device_count=4, current=1) == torch.device("cuda", 1)
    assert choose_device("undefined", None, None) == torch.device("cpu")


def test_an_empty_rank_takes_the_device_type_the_others_agree_on():
    agreed = reconcile([[("List", "cuda")], [("List", "cpu")]], [List()])
    assert agreed == [("List", "cuda")]
    assert reconcile([[("Cat", "cpu")], [("Cat", "cpu")]], [Cat()]) == [("Cat", "cpu")]


def test_one_process_returns_list_items_without_serialising():
    items, cat = List(), Cat()
    first = torch.arange(3)
    items(first), cat(first), cat(first + 3)
    listed, joined = calculate([items, cat])
    assert listed[0].data_ptr() == first.data_ptr()  # the same memory: no round trip through bytes
    assert torch.equal(joined, torch.arange(6))


def empty_rank_cat(rank, world):
    cat, items = Cat(), List()
    if rank == 0:
        cat(torch.arange(4.0).reshape(2, 2)), items(torch.ones(1))
    got, listed = calculate([cat, items])
    return got.device.type, got.shape, [t.device.type for t in listed]


def test_cat_and_list_on_an_empty_rank_come_back_like_everywhere_else(dist_pool):
    for device, shape, listed in dist_pool.run(empty_rank_cat, 3):
        assert device == "cpu" and tuple(shape) == (2, 2) and listed == ["cpu"]
