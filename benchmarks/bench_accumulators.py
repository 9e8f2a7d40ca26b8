"""Time one cross-rank sync of N scalar means: distlearn vs torchmetrics, side by side.

Two gloo ranks on this machine. For N in (1, 16, 64) each repeat updates every
metric once (local) and then syncs:
  - distlearn: ``calculate([Mean() ...])``
  - torchmetrics: ``MeanMetric().compute()`` for each metric
  - torchmetrics: ``MetricCollection({...}).compute()``
The three are interleaved repeat by repeat, so machine noise hits all alike;
medians are compared. Then, interleaved the same way:
  - 64 metrics of mixed kinds (16 each of accuracy, macro F1 over 5 classes,
    MSE and a mean): ``calculate()`` vs torchmetrics' ``MetricCollection.compute()``
    (target: >= 40x faster);
  - ``calculate()`` of 64 scalar means vs one raw ``all_reduce`` of the same
    128 float64 numbers, the floor (target: within 1.5x), and vs a raw
    ``all_reduce`` of the fixed-length buffer calculate() sends; each as the
    median of adjacent-run ratios (wall) and the ratio of CPU times.
Also: relative error of a mean over 10**7 bfloat16 values against the exact
mean (math.fsum), distlearn vs torchmetrics' MeanMetric.

Run: python benchmarks/bench_accumulators.py [--repeats 30] [--floor]  (--floor: the floor comparison alone)
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import socket
import statistics
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SIZES = (1, 16, 64)


def _timed(fn) -> float:
    dist.barrier()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _rank_main(rank: int, world: int, port: int, repeats: int, floor_only: bool, queue) -> None:
    import torchmetrics
    from torchmetrics import MeanMetric, MetricCollection

    from distlearn.accumulators import Mean, calculate

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    results = {}
    for n in () if floor_only else SIZES:
        ours = [Mean() for _ in range(n)]
        theirs = [MeanMetric() for _ in range(n)]
        collection = MetricCollection({f"m{i}": MeanMetric() for i in range(n)}, compute_groups=False)
        times = {"distlearn": [], "torchmetrics": [], "collection": []}
        for r in range(repeats + 2):  # two warm-up rounds
            value = float(rank + r)
            for m in ours:
                m(value)
            for m in theirs:
                m.update(value)
            for m in collection.values():
                m.update(value)
            t_ours = _timed(lambda: calculate(ours))
            t_theirs = _timed(lambda: [m.compute() for m in theirs])
            t_coll = _timed(lambda: collection.compute())
            if r >= 2:
                times["distlearn"].append(t_ours)
                times["torchmetrics"].append(t_theirs)
                times["collection"].append(t_coll)
        # the numbers agree
        expected = theirs[-1].compute().item()
        assert abs(calculate(ours)[-1] - expected) < 1e-6 * max(1, abs(expected))
        results[n] = {k: statistics.median(v) for k, v in times.items()}
    results["mixed"] = None if floor_only else _mixed(rank, repeats)
    results["floor"] = _floor(rank, repeats)
    if rank == 0:
        queue.put((results, torchmetrics.__version__))
    dist.barrier()
    dist.destroy_process_group()


def _mixed(rank: int, repeats: int) -> dict[str, float]:
    """64 metrics of four kinds: distlearn's one calculate() vs torchmetrics' MetricCollection."""
    from torchmetrics import MeanMetric, MeanSquaredError, MetricCollection
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

    from distlearn.accumulators import Mean, calculate
    from distlearn.metrics import F1, MSE, Accuracy, Metrics

    k, per_kind = 5, 16
    ours = Metrics(
        {f"acc{i}": Accuracy() for i in range(per_kind)}
        | {f"f1{i}": F1("macro", num_classes=k) for i in range(per_kind)}
        | {f"mse{i}": MSE() for i in range(per_kind)}
        | {f"mean{i}": Mean() for i in range(per_kind)}
    )
    theirs = MetricCollection(
        {f"acc{i}": MulticlassAccuracy(k, average="micro") for i in range(per_kind)}
        | {f"f1{i}": MulticlassF1Score(k, average="macro") for i in range(per_kind)}
        | {f"mse{i}": MeanSquaredError() for i in range(per_kind)}
        | {f"mean{i}": MeanMetric() for i in range(per_kind)},
        compute_groups=False,
    )
    generator = torch.Generator().manual_seed(rank)
    times: dict[str, list[float]] = {"distlearn": [], "torchmetrics": []}
    for r in range(repeats + 2):
        scores = torch.randn(32, k, generator=generator)
        labels = torch.randint(0, k, (32,), generator=generator)
        targets = torch.randn(32, generator=generator)
        for key, metric in ours.metrics.items():
            if key.startswith("mse"):
                metric(y_pred=targets + 0.5, y_true=targets)
            elif key.startswith("mean"):
                metric(targets.mean(), weight=32)
            else:
                metric(y_score=scores, y_true=labels)
        for key, metric in theirs.items(keep_base=True):
            if key.startswith("mse"):
                metric.update(targets + 0.5, targets)
            elif key.startswith("mean"):
                metric.update(targets.mean(), weight=32)
            else:
                metric.update(scores, labels)
        t_ours = _timed(lambda: calculate([ours]))
        t_theirs = _timed(lambda: theirs.compute())
        if r >= 2:
            times["distlearn"].append(t_ours)
            times["torchmetrics"].append(t_theirs)
    ours_values, their_values = calculate([ours])[0], {k: v.item() for k, v in theirs.compute().items()}
    assert all(abs(ours_values[key] - their_values[key]) < 1e-5 for key in ours_values), "the values differ"
    return {key: statistics.median(v) for key, v in times.items()}


def _floor(rank: int, repeats: int) -> dict[str, float]:
    """calculate() of 64 scalar means against raw all_reduces: of the same 128 numbers, of the same buffer.

    The three run side by side in every repeat, so the ratios come from adjacent runs: the
    median of per-repeat ratios, in wall time and in CPU time (the process's, gloo's threads
    included), which the shared machine's load disturbs less than the medians of each.
    """
    from distlearn.accumulators import Mean, calculate
    from distlearn.accumulators.wire import INLINE

    means = [Mean() for _ in range(64)]
    for m in means:
        m(float(rank), weight=2)
    payload = torch.zeros(128, dtype=torch.float64)
    buffer = torch.zeros(INLINE + 6 + 2, dtype=torch.float64)  # signature (6) + byte sizes (world) + inline sums
    runs = {"distlearn": lambda: calculate(means), "raw": lambda: dist.all_reduce(payload),
            "raw_buffer": lambda: dist.all_reduce(buffer)}
    wall: dict[str, list[float]] = {key: [] for key in runs}
    cpu: dict[str, list[float]] = {key: [] for key in runs}
    for r in range(5 * repeats + 2):  # cheap calls: more repeats, interleaved
        for key, fn in runs.items():
            dist.barrier()
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            if r >= 2:
                wall[key].append(time.perf_counter() - start)
                cpu[key].append(time.process_time() - start_cpu)
    out = {key: statistics.median(v) for key, v in wall.items()}
    for base in ("raw", "raw_buffer"):
        out[f"wall/{base}"] = statistics.median(a / b for a, b in zip(wall["distlearn"], wall[base]))
        out[f"cpu/{base}"] = statistics.median(cpu["distlearn"]) / statistics.median(cpu[base])
    return out


def _precision() -> tuple[float, float]:
    from torchmetrics import MeanMetric

    from distlearn.accumulators import Mean

    values = (torch.randn(10**7, generator=torch.Generator().manual_seed(0)) + 3).to(torch.bfloat16)
    exact = math.fsum(values.double().tolist()) / values.numel()
    ours, theirs = Mean(), MeanMetric()
    for chunk in values.split(65536):
        ours.extend(chunk)
        theirs.update(chunk)
    return abs(ours.calculate().item() - exact) / exact, abs(theirs.compute().item() - exact) / exact


def _print_against_torchmetrics(results: dict, mixed: dict, repeats: int, version: str) -> None:
    print(f"sync of N scalar means, 2 gloo ranks, median of {repeats} interleaved repeats (torchmetrics {version})")
    print(f"{'N':>4} {'distlearn':>12} {'torchmetrics':>14} {'ratio':>7} {'collection':>12} {'ratio':>7}")
    for n, t in results.items():
        print(
            f"{n:>4} {t['distlearn'] * 1e3:>10.2f}ms {t['torchmetrics'] * 1e3:>12.2f}ms "
            f"{t['torchmetrics'] / t['distlearn']:>6.1f}x {t['collection'] * 1e3:>10.2f}ms "
            f"{t['collection'] / t['distlearn']:>6.1f}x"
        )
    print(
        f"64 mixed metrics (accuracy, macro F1, MSE, mean): distlearn {mixed['distlearn'] * 1e3:.2f}ms, "
        f"torchmetrics MetricCollection {mixed['torchmetrics'] * 1e3:.2f}ms: "
        f"{mixed['torchmetrics'] / mixed['distlearn']:.1f}x (target >= 40x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--floor", action="store_true", help="only calculate() against the raw all_reduce")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_rank_main, args=(2, port, args.repeats, args.floor, queue), nprocs=2, start_method="spawn")
    results, version = queue.get()
    mixed, floor = results.pop("mixed"), results.pop("floor")
    if not args.floor:
        _print_against_torchmetrics(results, mixed, args.repeats, version)
    print(
        f"calculate() of 64 scalar means vs one raw all_reduce of the same 128 float64 numbers (the floor): "
        f"{floor['wall/raw']:.2f}x wall, {floor['cpu/raw']:.2f}x CPU (target <= 1.5x; "
        f"{floor['distlearn'] * 1e6:.0f}us vs {floor['raw'] * 1e6:.0f}us); vs a raw all_reduce of calculate()'s "
        f"fixed-length buffer: {floor['wall/raw_buffer']:.2f}x wall, {floor['cpu/raw_buffer']:.2f}x CPU "
        f"(wall: median of {5 * args.repeats} adjacent-run ratios; CPU: ratio of medians)"
    )
    if args.floor:
        return
    ours, theirs = _precision()
    print(f"mean of 10^7 bf16 values, relative error vs exact: distlearn {ours:.1e}, torchmetrics MeanMetric {theirs:.1e}")


if __name__ == "__main__":
    main()
