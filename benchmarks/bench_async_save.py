"""Loop-blocked time per checkpoint save: synchronous against ``run.checkpoint.async``, side by side.

One process, a model of about 100 MB (``nn.Linear(5000, 5000)``, SGD: no optimizer state), the
checkpoints on this machine's disk. Each repeat saves once synchronously and once in the
background (the order alternating, so machine noise hits both alike), with a pause between
saves standing in for training (a GPU-bound loop leaves the CPU to the writer). The blocked time
of a background save is what the loop spends in ``Checkpoints.save`` (staging to host memory)
plus in ``Checkpoints.agreed`` at the next display step (the commit, once the write has finished).

Target: the background save blocks the loop for at most a quarter of the synchronous save.

Run: python benchmarks/bench_async_save.py [--repeats 5] [--size 5000] [--pause 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn


def _blocked(checkpoints, accelerator, step: int, pause: float) -> float:
    """Seconds the loop is blocked by one save (and, in the background, its commit at the next display step)."""
    state = {"epoch": 0, "step": step, "batches_done": step}
    began = time.perf_counter()
    checkpoints.save(accelerator, state, {"step": step, "epoch": 0, "batches_done": step})
    blocked = time.perf_counter() - began
    time.sleep(pause)  # training goes on
    began = time.perf_counter()
    summed = checkpoints.stop_flags(True).pack().calculate().tolist()  # what a display step's reduction gives
    checkpoints.agreed(summed, accelerator)
    return blocked + time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=5000, help="the Linear layer's width (5000: 100 MB)")
    parser.add_argument("--pause", type=float, default=3.0, help="seconds of 'training' between saves")
    args = parser.parse_args()
    from accelerate import Accelerator

    from distlearn.training.checkpoint import Checkpoints, find

    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(nn.Linear(args.size, args.size), torch.optim.SGD(
        nn.Linear(1, 1).parameters(), lr=0.1))
    megabytes = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
    times: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as folder:
        stores = {mode: Checkpoints(Path(folder) / str(mode), keep_last=2, asynchronous=mode) for mode in times}
        for repeat in range(args.repeats + 1):  # the first repeat warms up (page cache, allocator)
            for mode in ((False, True) if repeat % 2 else (True, False)):
                blocked = _blocked(stores[mode], accelerator, repeat + 1, args.pause)
                if repeat:
                    times[mode].append(blocked)
        stores[True].finish(accelerator)
        assert [p.name for p, _ in find(Path(folder) / "True")] == [p.name for p, _ in find(Path(folder) / "False")]
    sync, background = statistics.median(times[False]), statistics.median(times[True])
    print(f"model {megabytes:.0f} MB, {args.repeats} saves each, {args.pause:.1f} s between saves")
    print(f"synchronous save: median {sync * 1000:.0f} ms blocked   ({', '.join(f'{t * 1000:.0f}' for t in times[False])})")
    print(f"background save:  median {background * 1000:.0f} ms blocked   "
          f"({', '.join(f'{t * 1000:.0f}' for t in times[True])})")
    print(f"ratio background / synchronous: {background / sync:.3f} (target <= 0.25)")


if __name__ == "__main__":
    main()
