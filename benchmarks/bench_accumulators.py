"""Time one cross-rank sync of N scalar means: distlearn vs torchmetrics, side by side.

Two gloo ranks on this machine. For N in (1, 16, 64) each repeat updates every
metric once (local) and then syncs:
  - distlearn: ``calculate([Mean() ...])``
  - torchmetrics: ``MeanMetric().compute()`` for each metric
  - torchmetrics: ``MetricCollection({...}).compute()``
The three are interleaved repeat by repeat, so machine noise hits all alike;
medians are compared. Also: relative error of a mean over 10**7 bfloat16 values
against the exact mean (math.fsum), distlearn vs torchmetrics' MeanMetric.

Run: python benchmarks/bench_accumulators.py [--repeats 30]
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


def _rank_main(rank: int, world: int, port: int, repeats: int, queue) -> None:
    import torchmetrics
    from torchmetrics import MeanMetric, MetricCollection

    from distlearn.accumulators import Mean, calculate

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    results = {}
    for n in SIZES:
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
    if rank == 0:
        queue.put((results, torchmetrics.__version__))
    dist.barrier()
    dist.destroy_process_group()


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_rank_main, args=(2, port, args.repeats, queue), nprocs=2, start_method="spawn")
    results, version = queue.get()
    print(f"sync of N scalar means, 2 gloo ranks, median of {args.repeats} interleaved repeats (torchmetrics {version})")
    print(f"{'N':>4} {'distlearn':>12} {'torchmetrics':>14} {'ratio':>7} {'collection':>12} {'ratio':>7}")
    for n, t in results.items():
        print(
            f"{n:>4} {t['distlearn'] * 1e3:>10.2f}ms {t['torchmetrics'] * 1e3:>12.2f}ms "
            f"{t['torchmetrics'] / t['distlearn']:>6.1f}x {t['collection'] * 1e3:>10.2f}ms "
            f"{t['collection'] / t['distlearn']:>6.1f}x"
        )
    ours, theirs = _precision()
    print(f"mean of 10^7 bf16 values, relative error vs exact: distlearn {ours:.1e}, torchmetrics MeanMetric {theirs:.1e}")


if __name__ == "__main__":
    main()
