"""Accumulators in real gloo process groups of 1-4 ranks against numpy on the concatenated data."""

from __future__ import annotations

import math
import sys
import time
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
from dist_pool import fork_context
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distlearn.accumulators import (
    Cat,
    DivergenceError,
    Except,
    List,
    Max,
    Mean,
    Min,
    Sum,
    calculate,
)

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64]
SHAPES = [(), (3,), (2, 2)]
KINDS = {"Sum": Sum, "Mean": Mean, "Max": Max, "Min": Min}
WORLD_SIZES = [1, 2, 3, 4]


def make_values(seed: int, n: int, shape: tuple, dtype: torch.dtype) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    if dtype == torch.int64:
        data = rng.integers(-1000, 1000, size=(n, *shape))
    else:
        data = rng.normal(scale=30.0, size=(n, *shape))
    return list(torch.as_tensor(data).to(dtype))


def step_major(per_rank: list[list]) -> list:
    out = []
    for step in range(max(map(len, per_rank), default=0)):
        out.extend(items[step] for items in per_rank if step < len(items))
    return out


# --------------------------------------------------------------------------- #
# Functions run on every rank (module level, so workers can import them)
# --------------------------------------------------------------------------- #


def accumulate_and_calculate(rank, world, kinds, per_rank):
    accs = {kind: KINDS[kind]() for kind in kinds}
    for value in per_rank[rank]:
        for acc in accs.values():
            acc(value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = calculate(accs)
    return result, [str(w.message) for w in caught]


def gather_on_ranks(rank, world, per_rank, cat_chunks):
    items, cat = List(), Cat()
    for item in per_rank[rank]:
        items(item)
    for chunk in cat_chunks[rank]:
        cat(chunk)
    return calculate([items, cat])


def weighted_mean_on_ranks(rank, world, per_rank):
    mean = Mean()
    for value, weight in per_rank[rank]:
        mean(value, weight=weight)
    return mean.calculate()


def calculate_then_continue(rank, world, first, second):
    mean, total = Mean(), Sum()
    for v in first[rank]:
        mean(v), total(v)
    before = (mean.value(), total.value())
    early = calculate([mean, total])
    after = (mean.value(), total.value())
    for v in second[rank]:
        mean(v), total(v)
    return early, before, after, calculate([mean, total])


def count_collectives(rank, world, n_means, n_max, n_lists):
    accs = [Mean() for _ in range(n_means)] + [Max() for _ in range(n_max)] + [List() for _ in range(n_lists)]
    for i, acc in enumerate(accs):
        acc(float(i + rank))
    names = ["all_reduce", "all_gather", "all_gather_object", "broadcast", "barrier", "reduce", "gather",
             "all_to_all", "reduce_scatter", "all_gather_into_tensor", "broadcast_object_list"]
    counts = dict.fromkeys(names, 0)
    originals = {name: getattr(dist, name) for name in names}

    def counting(name):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return originals[name](*args, **kwargs)
        return wrapper

    for name in names:
        setattr(dist, name, counting(name))
    try:
        values = calculate(accs)
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    return {k: v for k, v in counts.items() if v}, values


def diverge(rank, world, case):
    if case == "count":
        accs = [Mean(), Sum()] if rank == 0 else [Mean()]
    elif case == "kind":
        accs = [Mean()] if rank == 0 else [Sum()]
    elif case == "shape":
        accs = [Sum()]
        accs[0](torch.zeros(rank + 1))
    elif case == "order":
        accs = [Mean(), List()] if rank % 2 else [List(), Mean()]
    else:
        raise ValueError(case)
    for acc in accs:
        if not isinstance(acc, List) and case != "shape":
            acc(1.0)
    start = time.monotonic()
    try:
        calculate(accs)
    except DivergenceError as error:
        return "DivergenceError", str(error), time.monotonic() - start
    return "no error", "", time.monotonic() - start


def survives_divergence(rank, world):
    try:
        calculate([Mean()] if rank == 0 else [Sum()])
    except DivergenceError:
        pass
    mean = Mean()
    mean(float(rank))
    return mean.calculate()


def empty_rank_shapes(rank, world):
    mean, top, low = Mean(), Max(), Min()
    if rank != 1:
        for value in ([1.0, -2.0], [3.0, 4.0]):
            mean(torch.tensor(value)), top(torch.tensor(value)), low(torch.tensor(value))
    return calculate([mean, top, low])


def many_states(rank, world, n):
    """More sum-like numbers than fit inline in the first collective."""
    total = Sum()
    total(torch.arange(n, dtype=torch.float64) * (rank + 1))
    return total.calculate()


# --------------------------------------------------------------------------- #
# Tests
# --------------------------------------------------------------------------- #


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    world=st.sampled_from(WORLD_SIZES),
    dtype=st.sampled_from(DTYPES),
    shape=st.sampled_from(SHAPES),
    lengths=st.lists(st.integers(0, 7), min_size=4, max_size=4),
    seed=st.integers(0, 2**31 - 1),
)
def test_sum_mean_max_min_equal_numpy_on_concatenated_data(dist_pool, world, dtype, shape, lengths, seed):
    lengths = lengths[:world]
    values = make_values(seed, sum(lengths), shape, dtype)
    per_rank, start = [], 0
    for n in lengths:
        per_rank.append(values[start : start + n])
        start += n
    results = dist_pool.run(accumulate_and_calculate, world, list(KINDS), per_rank)
    # identical on every rank
    for other, _ in results[1:]:
        for kind in KINDS:
            torch.testing.assert_close(other[kind], results[0][0][kind], equal_nan=True, rtol=0, atol=0)
    got, warned = results[0]
    if not values:
        assert got["Sum"] == 0 and math.isnan(got["Mean"]) and math.isnan(got["Max"]) and math.isnan(got["Min"])
        assert any("NaN" in w for w in warned)
        return
    data = np.stack([v.double().numpy() for v in values])
    float_input = dtype.is_floating_point
    torch.testing.assert_close(got["Sum"], torch.as_tensor(data.sum(0)).to(torch.float64 if float_input else torch.int64), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(got["Mean"], torch.as_tensor(data.mean(0)), rtol=1e-12, atol=1e-12)
    assert got["Max"].dtype == dtype and got["Min"].dtype == dtype
    assert torch.equal(got["Max"], torch.as_tensor(data.max(0)).to(dtype))
    assert torch.equal(got["Min"], torch.as_tensor(data.min(0)).to(dtype))
    assert got["Mean"].dtype == torch.float64 and tuple(got["Mean"].shape) == shape
    assert not warned


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    world=st.sampled_from(WORLD_SIZES),
    lengths=st.lists(st.integers(0, 5), min_size=4, max_size=4),
    chunk_rows=st.lists(st.integers(0, 4), min_size=20, max_size=20),
    dtype=st.sampled_from(DTYPES),
)
def test_list_and_cat_return_every_rank_in_step_major_order(dist_pool, world, lengths, chunk_rows, dtype):
    lengths = lengths[:world]
    per_rank = [[{"rank": r, "step": s} for s in range(n)] for r, n in enumerate(lengths)]
    rows = iter(chunk_rows)
    chunks = [[torch.full((next(rows), 2), float(10 * r + s)).to(dtype) for s in range(n)] for r, n in enumerate(lengths)]
    results = dist_pool.run(gather_on_ranks, world, per_rank, chunks)
    expected_items = step_major(per_rank)
    expected_cat = step_major(chunks)
    for items, cat in results:
        assert items == expected_items
        if expected_cat:
            assert torch.equal(cat, torch.cat(expected_cat))
        else:
            assert cat.numel() == 0


@pytest.mark.parametrize("world", WORLD_SIZES)
def test_weighted_mean_is_the_per_sample_mean_over_uneven_batches(dist_pool, world):
    rng = np.random.default_rng(world)
    samples = rng.normal(size=23)
    batches, start = [], 0
    for size in (5, 5, 5, 5, 3):  # an uneven last batch
        batches.append((float(samples[start : start + size].mean()), size))
        start += size
    per_rank = [batches[r::world] for r in range(world)]
    results = dist_pool.run(weighted_mean_on_ranks, world, per_rank)
    assert all(r == pytest.approx(samples.mean(), rel=1e-13) for r in results)
    assert all(isinstance(r, float) for r in results)


@pytest.mark.parametrize("world", [2, 3])
def test_calculate_leaves_local_state_and_accumulation_goes_on(dist_pool, world):
    first = [[float(r + i) for i in range(r + 1)] for r in range(world)]
    second = [[float(10 * r)] for r in range(world)]
    for early, before, after, final in dist_pool.run(calculate_then_continue, world, first, second):
        assert before == after
        everything = [v for vs in first for v in vs]
        assert early == pytest.approx([np.mean(everything), sum(everything)])
        everything += [v for vs in second for v in vs]
        assert final == pytest.approx([np.mean(everything), sum(everything)])


@pytest.mark.parametrize("n", [1, 16, 64])
def test_collective_count_does_not_grow_with_the_number_of_accumulators(dist_pool, n):
    world = 2
    # Sum-like only: one fixed-length all_reduce carries signature and sums.
    counts, values = dist_pool.run(count_collectives, world, n, 0, 0)[0]
    assert counts == {"all_reduce": 1}
    assert values == pytest.approx([i + 0.5 for i in range(n)])
    # Plus Max states: one all_reduce(MAX) more.
    counts, _ = dist_pool.run(count_collectives, world, n, n, 0)[0]
    assert counts == {"all_reduce": 2}
    # Plus List states: one all_gather more (their sizes travel in the first all_reduce).
    counts, _ = dist_pool.run(count_collectives, world, n, n, n)[0]
    assert counts == {"all_reduce": 2, "all_gather": 1}


def test_sums_longer_than_the_inline_part_take_one_more_all_reduce(dist_pool):
    for n in (4095, 4096, 4097, 9000):
        results = dist_pool.run(many_states, 3, n)
        expected = torch.arange(n, dtype=torch.float64) * 6
        assert all(torch.equal(r, expected) for r in results)


@pytest.mark.parametrize("case", ["count", "kind", "shape", "order"])
@pytest.mark.parametrize("world", [2, 3])
def test_divergent_calls_raise_on_every_rank_quickly(dist_pool, case, world):
    results = dist_pool.run(diverge, world, case, timeout=30)
    for name, message, seconds in results:
        assert name == "DivergenceError", message
        assert "rank 0" in message and "rank 1" in message
        assert seconds < 5
    # the group still works afterwards
    assert dist_pool.run(survives_divergence, world) == [pytest.approx(np.mean(range(world)))] * world


@pytest.mark.parametrize("world", [2, 3, 4])
def test_a_rank_with_no_data_takes_part_and_the_result_stays_exact(dist_pool, world):
    for mean, top, low in dist_pool.run(empty_rank_shapes, world):
        n = world - 1  # ranks with data, each saw [1, -2] and [3, 4]
        torch.testing.assert_close(mean, torch.tensor([2.0, 1.0], dtype=torch.float64))
        assert torch.equal(top, torch.tensor([3.0, 4.0])) and torch.equal(low, torch.tensor([1.0, -2.0]))
        assert n >= 1


# --------------------------------------------------------------------------- #
# Single process: types, precision, state dicts, Except
# --------------------------------------------------------------------------- #


def test_python_numbers_give_python_numbers_and_tensors_give_tensors():
    total, mean, top = Sum(), Mean(), Max()
    for v in (1, 2, 3):
        total(v), mean(v), top(v)
    assert total.calculate() == 6 and isinstance(total.calculate(), int)
    assert mean.calculate() == 2.0 and isinstance(mean.calculate(), float)
    assert top.calculate() == 3 and isinstance(top.calculate(), int)
    t = Sum()
    t(torch.ones(2, 3, dtype=torch.float16))
    assert t.calculate().shape == (2, 3) and t.calculate().dtype == torch.float64
    assert Sum()(torch.tensor([True, False])).dtype == torch.int64


def test_no_process_group_gives_the_local_value():
    assert not dist.is_initialized()
    mean = Mean()
    mean(torch.tensor(2.0)), mean(torch.tensor(4.0))
    assert mean.calculate() == mean.value() == 3.0


def test_values_that_require_grad_are_detached():
    weight = torch.ones(3, requires_grad=True)
    mean, items, cat = Mean(), List(), Cat()
    loss = (weight * 2).sum()
    assert not mean(loss).requires_grad
    items(loss), cat(loss.reshape(1))
    assert not items.value()[0].requires_grad and not cat.value().requires_grad


def test_a_shape_change_is_a_clear_error():
    total = Sum()
    total(torch.zeros(3))
    with pytest.raises(ValueError, match=r"shape \(2,\) after values of shape \(3,\)"):
        total(torch.zeros(2))
    cat = Cat()
    cat(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="differ in dim 0 only"):
        cat(torch.zeros(2, 4))


def test_mean_of_ten_million_bf16_values_is_exact_to_1e_12():
    values = (torch.randn(10**7, generator=torch.Generator().manual_seed(0)) + 3).to(torch.bfloat16)
    mean = Mean()
    for chunk in values.split(65536):
        mean.extend(chunk)
    exact = math.fsum(values.double().tolist()) / values.numel()
    assert abs(mean.calculate().item() - exact) / abs(exact) < 1e-12


def test_mean_of_many_single_bf16_calls_stays_exact():
    values = (torch.rand(20000, generator=torch.Generator().manual_seed(1)) * 300).to(torch.bfloat16)
    mean = Mean()
    for v in values:
        mean(v)
    exact = math.fsum(values.double().tolist()) / values.numel()
    assert abs(mean.calculate().item() - exact) / exact < 1e-12


def test_empty_mean_is_nan_with_a_warning_not_zero_division():
    with pytest.warns(RuntimeWarning, match="NaN"):
        assert math.isnan(Mean().calculate())
    zero = Mean()
    zero(5.0, weight=0)
    with pytest.warns(RuntimeWarning, match="NaN"):
        assert math.isnan(zero.calculate())


@pytest.mark.parametrize("make", [Sum, Mean, Max, Min, List, Cat, lambda: Except(Mean(), begin=1)])
def test_state_dict_resumes_exactly(make):
    stream = [torch.tensor([float(i), -float(i) * 0.5]).reshape(1, 2) for i in range(8)]
    whole = make()
    for v in stream:
        whole(v)
    first = make()
    for v in stream[:3]:
        first(v)
    state = first.state_dict()
    first(torch.full((1, 2), 99.0))  # later changes must not leak into the saved state
    resumed = make()
    resumed.load_state_dict(state)
    for v in stream[3:]:
        resumed(v)
    expected, got = whole.calculate(), resumed.calculate()
    if isinstance(expected, list):
        assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))
    else:
        assert torch.equal(got, expected)


def test_reset_empties():
    mean = Mean()
    mean(3.0)
    mean.reset()
    mean(torch.zeros(2))  # a new shape is fine after reset
    assert torch.equal(mean.value(), torch.zeros(2, dtype=torch.float64))


def run_except(acc: Except, n: int = 12) -> list[int]:
    kept = List()
    acc.accumulator = kept
    for i in range(n):
        acc(i)
    return kept.value()


@pytest.mark.parametrize(
    ("kwargs", "excluded"),
    [
        ({}, {0}),
        ({"begin": 3}, {3}),
        ({"begin": 2, "end": 4}, {2, 3, 4}),
        ({"end": 1}, {0, 1}),
        ({"begin": [1, 5], "end": [2, 6]}, {1, 2, 5, 6}),
        ({"begin": torch.tensor([0, 7]), "end": torch.tensor([0, 9])}, {0, 7, 8, 9}),
        ({"begin": 1, "period": 4}, {1, 5, 9}),
        ({"begin": 0, "end": 1, "period": 5}, {0, 1, 5, 6, 10, 11}),
        ({"begin": torch.tensor([0, 2]), "end": torch.tensor([0, 2]), "period": 3}, {0, 2, 3, 5, 6, 8, 9, 11}),
    ],
)
def test_except_leaves_out_exactly_the_given_indices(kwargs, excluded):
    assert run_except(Except(List(), **kwargs)) == [i for i in range(12) if i not in excluded]


def test_except_counts_from_the_last_reset_and_delegates():
    acc = Except(Sum(), begin=0)
    acc(5), acc(7)
    assert acc.calculate() == 7
    acc.reset()
    acc(1), acc(2)
    assert acc.value() == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"begin": -1}, ">= 0"),
        ({"begin": 3, "end": 1}, "end must be >= begin"),
        ({"begin": [1, 2], "end": [3]}, "equal lengths"),
        ({"begin": 1.5}, "int"),
        ({"begin": torch.tensor([1.0])}, "integer"),
        ({"begin": 0, "period": 0}, "period must be an int >= 1"),
        ({"begin": 2, "end": 4, "period": 3}, "inside the period"),
    ],
)
def test_except_rejects_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Except(Sum(), **kwargs)


def dict_keys_in_rank_order(rank, world):
    a, b = Mean(), Mean()
    a(1.0), b(2.0)
    accs = {"a": a, "b": b} if rank == 0 else {"b": b, "a": a}
    try:
        calculate(accs)
    except DivergenceError as error:
        return str(error)
    return "no error"


def ints_here_floats_there(rank, world):
    total, top = Sum(), Max()
    value = 1 if rank == 0 else 1.5
    total(value), top(value)
    return calculate([total, top])


def test_dicts_with_different_key_order_raise_instead_of_mixing_values(dist_pool):
    for message in dist_pool.run(dict_keys_in_rank_order, 2):
        assert "different keys" in message and "['a', 'b']" in message and "['b', 'a']" in message


def test_python_ints_on_one_rank_and_floats_on_another_give_one_float_everywhere(dist_pool):
    results = dist_pool.run(ints_here_floats_there, 2)
    assert results == [[2.5, 1.5], [2.5, 1.5]]
    assert all(isinstance(v, float) for r in results for v in r)


def test_weights_that_require_grad_are_detached():
    w = torch.tensor(2.0, requires_grad=True)
    mean = Mean()
    mean(torch.tensor(3.0), weight=w * 1)
    mean.extend(torch.ones(2), weights=torch.ones(2, requires_grad=True) * 1)
    assert not mean.value().requires_grad
    assert all(not s.requires_grad for s in mean.state_dict()["states"].values())


@pytest.mark.parametrize("kwargs", [{"begin": []}, {"begin": [1], "end": []}, {"begin": torch.tensor([], dtype=torch.long)}])
def test_except_rejects_empty_ranges(kwargs):
    with pytest.raises(ValueError, match="must not be empty"):
        Except(Sum(), **kwargs)


# --------------------------------------------------------------------------- #
# A weight of 0 contributes nothing, whatever the value
# --------------------------------------------------------------------------- #


def _shards(samples: np.ndarray, world: int, batch: int) -> list[list[np.ndarray]]:
    """Each rank's batches as an even_batches loader gives them: the last global batch's real rows
    in rank order, so a rank may get an empty last batch (50 samples, batch 3, 2 ranks: rank 1's)."""
    per_rank: list[list[np.ndarray]] = [[] for _ in range(world)]
    for step in range(math.ceil(len(samples) / (batch * world))):
        for rank in range(world):
            start = step * batch * world + rank * batch
            per_rank[rank].append(samples[start : start + batch])
    return per_rank


def zero_weight_mean_on_ranks(rank, world, batches, form, nan_strategy):
    mean = Mean(nan_strategy=nan_strategy)
    # The empty batch's mean is NaN, as CrossEntropyLoss of an empty batch is; inf and NaN of weight 0 too.
    values = [torch.as_tensor(b, dtype=torch.float64).mean() for b in batches[rank]]
    values += [torch.tensor(math.inf, dtype=torch.float64), torch.tensor(math.nan, dtype=torch.float64)]
    weights = [len(b) for b in batches[rank]] + [0, 0]
    if form == "extend":
        mean.extend(torch.stack(values), torch.tensor(weights))
    elif form == "vector":  # elementwise weights: the second entry's weight is 0 on odd batches only
        for v, w in zip(values, weights):
            mean(torch.stack([v, -v]), weight=torch.tensor([w, w if w % 2 == 0 else 0]))
    else:
        for v, w in zip(values, weights):
            if form == "number":
                mean(v.item(), weight=w)
            elif form == "tensor":
                mean(v, weight=torch.tensor(w))
            else:  # "python": a tensor value, a Python weight (the README's loop)
                mean(v, weight=w)
    result = mean.calculate()
    return result.tolist() if isinstance(result, torch.Tensor) else result


@pytest.mark.parametrize("nan_strategy", ["disable", "error"])
@pytest.mark.parametrize("form", ["python", "number", "tensor", "extend", "vector"])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_a_zero_weight_adds_nothing_even_nan_or_inf(dist_pool, world, form, nan_strategy):
    samples = np.random.default_rng(world).normal(size=50)
    batches = _shards(samples, world, 3)
    if world > 1:
        assert any(len(b) == 0 for b in batches[-1]), "the case this test is for: a rank's empty last batch"
    results = dist_pool.run(zero_weight_mean_on_ranks, world, batches, form, nan_strategy)
    if form == "vector":
        odd = np.concatenate([b for rank in batches for b in rank if len(b) % 2 == 0])
        expected = [samples.mean(), -odd.mean()]
        assert all(r == pytest.approx(expected, rel=1e-13) for r in results)
    else:
        assert all(r == pytest.approx(samples.mean(), rel=1e-13) for r in results)


def only_zero_weights_on_rank_one(rank, world):
    mean = Mean()
    if rank == 1:
        mean(torch.tensor(math.nan), weight=0)  # its only update: the shape is known, nothing is added
    else:
        mean(torch.tensor(2.0), weight=3)
    return mean.calculate().item()


def test_a_rank_whose_only_update_has_weight_zero_leaves_the_mean_exact(dist_pool):
    assert dist_pool.run(only_zero_weights_on_rank_one, 2) == [2.0, 2.0]


def test_a_python_zero_weight_does_no_tensor_work_and_a_tensor_one_no_host_sync():
    from host_syncs import HostSyncs

    mean = Mean()
    mean(torch.tensor(1.0), weight=2)
    state = {k: v.clone() for k, v in mean._states.items()}
    nan = torch.tensor(math.nan)
    with torch.profiler.profile() as prof:
        for _ in range(5):
            mean.update(nan, weight=0)
            mean.update(math.nan, weight=0)
    assert not [e.name for e in prof.events() if e.name.startswith("aten::")]
    assert all(torch.equal(state[k], v) for k, v in mean._states.items())
    with HostSyncs() as syncs:
        mean(torch.tensor(math.inf), weight=torch.tensor(0))
        mean.extend(torch.tensor([math.nan, 4.0]), torch.tensor([0, 1]))
        vector = Mean(nan_strategy="ignore")
        vector(torch.tensor([math.nan, 1.0]), weight=torch.tensor([0.0, 1.0]))
    assert syncs.n == 0
    assert mean.value().item() == pytest.approx(2.0)  # (1*2 + 4*1) / 3
    assert vector.value().isnan().tolist() == [True, False]  # nothing of weight 1 in the first entry: 0/0
    with pytest.raises(ValueError, match="shape"):  # the shape is still checked for a zero weight
        mean(torch.zeros(2), weight=0)


_TRAPPED = """
import sys
import torch
from accelerate import Accelerator
from distlearn import Sum, calculate

accelerator = Accelerator()  # plain torchrun on a machine without a GPU: it sees 1 process, the group 2
total = Sum()
total(torch.tensor(50.0))    # all the data, on each rank
try:
    calculate([total])
except RuntimeError as error:
    print("REFUSED", accelerator.num_processes, error, flush=True)
    sys.exit(0)  # not an error exit: torchrun would stop the other rank before it prints
print("REDUCED", calculate([total]), flush=True)
"""


def test_calculate_refuses_ranks_whose_accelerator_sees_one_process_each(tmp_path):
    """2 ranks launched as plain torchrun does (its variables, no ACCELERATE_USE_CPU; forked warm: Accelerate
    reads only the variables) with a bare Accelerator: a silent 100 for 50 samples before."""
    import warm
    from launching import launch_env

    if torch.cuda.is_available():
        pytest.skip("with a GPU a plain Accelerator sees every process")
    script = tmp_path / "trapped.py"
    script.write_text(_TRAPPED)
    env = launch_env()
    del env["ACCELERATE_USE_CPU"]
    result = warm.run([sys.executable, str(script)], env=env, timeout=240, procs=2)
    assert result.stdout.count("REFUSED 1 calculate(): Accelerate sees 1 process(es) but the process group holds 2") == 2, (
        result.stdout + result.stderr
    )
    assert "REDUCED" not in result.stdout


def split(data: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    return np.split(data, np.cumsum(lengths)[:-1])


def nan_weight_mean_on_ranks(rank, world, values, weights, form, nan_strategy):
    mean = Mean(nan_strategy=nan_strategy)
    v, w = values[rank], weights[rank]
    if form == "extend":
        mean.extend(torch.as_tensor(v), torch.as_tensor(w))
    else:
        for a, b in zip(v.tolist(), w.tolist()):
            if form == "number":
                mean(a, weight=b)
            elif form == "python":  # a tensor value, a Python weight
                mean(torch.tensor(a, dtype=torch.float64), weight=b)
            else:
                mean(torch.tensor(a, dtype=torch.float64), weight=torch.tensor(b, dtype=torch.float64))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = mean.calculate()
        except ValueError as error:
            return "raised: " + str(error)
    result = result.item() if isinstance(result, torch.Tensor) else result
    return result, [str(w.message) for w in caught]


@pytest.mark.parametrize("form", ["number", "python", "tensor", "extend"])
@pytest.mark.parametrize("world", [1, 2])
def test_a_nan_weight_drops_its_pair_as_torchmetrics_mean_metric(dist_pool, world, form):
    # Before: "ignore"/"warn" left out NaN values only, so a NaN weight made the mean NaN, and
    # "error" did not raise. torchmetrics' MeanMetric drops a pair whose value or weight is NaN.
    torchmetrics = pytest.importorskip("torchmetrics")
    values = np.array([1.0, 2.0, math.nan, 4.0, 5.0, 6.0])
    weights = np.array([1.0, math.nan, 2.0, 3.0, math.nan, 0.5])
    lengths = [6] if world == 1 else [2, 4]  # a NaN weight on each rank
    for nan_strategy in ("ignore", "warn"):
        reference = torchmetrics.MeanMetric(nan_strategy=nan_strategy).to(torch.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference.update(torch.as_tensor(values), torch.as_tensor(weights))
        expected = float(reference.compute())
        keep = ~(np.isnan(values) | np.isnan(weights))
        assert expected == pytest.approx(np.average(values[keep], weights=weights[keep]), rel=1e-12)
        results = dist_pool.run(nan_weight_mean_on_ranks, world, split(values, lengths), split(weights, lengths),
                                form, nan_strategy)
        for value, caught in results:
            assert value == pytest.approx(expected, rel=1e-12)
            assert bool(caught) == (nan_strategy == "warn") and all("left out 3 NaN" in m for m in caught)
    for message in dist_pool.run(nan_weight_mean_on_ranks, world, split(values, lengths), split(weights, lengths),
                                 form, "error"):
        assert message.startswith("raised: Mean: 3 NaN input value(s)")
    for value, _ in dist_pool.run(nan_weight_mean_on_ranks, world, split(values, lengths), split(weights, lengths),
                                  form, "disable"):
        assert math.isnan(value)  # the default propagates NaN, as numpy's average


def test_a_nan_weight_is_dropped_elementwise_without_a_host_sync():
    from host_syncs import HostSyncs

    mean = Mean(nan_strategy="ignore")
    with HostSyncs() as syncs:
        mean(torch.tensor([1.0, 2.0, 3.0]), weight=torch.tensor([1.0, math.nan, 2.0]))
        mean(torch.tensor([3.0, 4.0, 5.0]), weight=torch.tensor([math.nan, 1.0, 2.0]))
        mean(torch.tensor([7.0, 8.0, 9.0]), weight=math.nan)
    assert syncs.n == 0
    assert mean.value().tolist() == [1.0, 4.0, 4.0]


def _peer_lost_rank(rank: int, port: int, peer: str, queue) -> None:
    """Rank 0 calls calculate(); rank 1 exits first ("exits") or never calls it ("absent")."""
    import os
    import time

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), ACCELERATE_USE_CPU="1")
    import torch.distributed as dist

    from distlearn.accelerator import build_accelerator
    from distlearn.accumulators import Mean, PeerLostError, calculate

    build_accelerator(timeout_s=3)
    dist.barrier()
    if rank == 1:
        if peer == "absent":
            time.sleep(8)  # alive, never calling: rank 0 waits for the timeout
        os._exit(0)
    if peer == "exits":
        time.sleep(1)
    mean = Mean()
    mean(1.0)
    try:
        calculate([mean])
        queue.put(("no error", None, None))
    except PeerLostError as exc:
        queue.put(("PeerLostError", str(exc), type(exc.__cause__).__name__))
    except BaseException as exc:  # noqa: BLE001 - the test reports what came instead
        queue.put((type(exc).__name__, str(exc), None))
    queue.close()
    queue.join_thread()  # the report is sent before the hard exit (which skips the queue's feeder thread)
    os._exit(0)


@pytest.mark.parametrize("peer", ["exits", "absent"])
def test_a_peer_that_ends_or_never_calls_gives_a_clear_error_after_the_timeout(peer):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = fork_context()  # fresh processes forked from the session's fork server, torch imported once
    queue = ctx.Queue()
    procs = [ctx.Process(target=_peer_lost_rank, args=(rank, port, peer, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    kind, message, cause = queue.get(timeout=90)
    for p in procs:  # rank 0 has reported; an absent rank 1 would sleep on
        p.kill()
        p.join(timeout=30)
    assert kind == "PeerLostError", (kind, message)
    assert "calculate() waited for another process that ended or did not arrive" in message
    assert "3 s" in message and cause == "RuntimeError"


def _timeout_of_existing_group(rank, world):
    from accelerate.state import AcceleratorState, GradientState

    from distlearn.accelerator import build_accelerator
    from distlearn.accumulators.collective import _timeout_text

    before = _timeout_text(None)
    try:
        build_accelerator()  # no timeout_s: an existing group keeps its own
        kept = _timeout_text(None)
        build_accelerator(timeout_s=7)
        return before, kept, _timeout_text(None)
    finally:
        import datetime

        import torch.distributed.distributed_c10d as c10d

        c10d._set_pg_timeout(datetime.timedelta(seconds=float(before.split()[0])))
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def test_build_accelerator_sets_the_timeout_of_a_group_that_already_exists(dist_pool):
    for before, kept, after in dist_pool.run(_timeout_of_existing_group, 2):
        assert kept == before and after == "7 s"
