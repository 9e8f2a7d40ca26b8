"""The time a mid-epoch resume takes to reach its position: skipping at the sampler vs reading and dropping.

One process. A map-style data set whose ``__getitem__`` costs about ``--cost-ms`` (a sleep: an
image decoded, a file read). The epoch has ``--samples`` samples in batches of ``--batch``; the resume
starts at batch ``--done``. Each repeat times, side by side in alternating order, the seconds from
the start of the epoch to its first remaining batch:

  - read and drop (what distlearn did before): the skipped batches are fetched and dropped;
  - skip at the sampler (``distlearn.runtime.skipping.batches_after``): none is fetched.

Prints both medians, their ratio, and how many samples each fetched.

Run: python benchmarks/bench_resume_skip.py [--samples 2000] [--batch 20] [--done 90] [--cost-ms 0.5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


class Costly(torch.utils.data.Dataset):
    def __init__(self, n: int, cost_s: float) -> None:
        self.x, self.cost_s, self.fetched = torch.randn(n, 8), cost_s, 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> torch.Tensor:
        self.fetched += 1
        time.sleep(self.cost_s)
        return self.x[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--done", type=int, default=90)
    parser.add_argument("--cost-ms", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from distlearn.runtime.accelerator import build_accelerator, prepare_loader
    from distlearn.runtime.skipping import batches_after, read_and_drop

    accelerator = build_accelerator(seed=0)
    data = Costly(args.samples, args.cost_ms / 1000)
    loader = prepare_loader(accelerator, torch.utils.data.DataLoader(
        data, batch_size=args.batch, shuffle=True, generator=torch.Generator().manual_seed(0)))
    ways = {"read and drop": read_and_drop, "skip at the sampler": batches_after}
    times: dict[str, list[float]] = {name: [] for name in ways}
    fetched: dict[str, int] = {}
    for repeat in range(args.repeats):
        for name in (list(ways) if repeat % 2 == 0 else list(ways)[::-1]):
            loader.set_epoch(1)
            data.fetched = 0
            begin = time.perf_counter()
            batches = iter(ways[name](loader, args.done))
            first = next(batches)
            times[name].append(time.perf_counter() - begin)
            fetched[name] = data.fetched
            del first, batches
    for name, values in times.items():
        print(f"{name:22s} median {statistics.median(values):8.3f} s to the first remaining batch, "
              f"{fetched[name]} samples fetched")
    ratio = statistics.median(times["read and drop"]) / statistics.median(times["skip at the sampler"])
    print(f"skip at the sampler reaches batch {args.done} of {args.samples // args.batch} {ratio:.0f}x sooner")


if __name__ == "__main__":
    main()
