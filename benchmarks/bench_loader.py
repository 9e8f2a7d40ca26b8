"""The default digits job's data loading: per-sample loader vs the batched fast path vs sliced tensors.

Three ways to train the default digits MLP (configs/digits.yaml: 64 -> 256 -> 10, dropout 0.1,
AdamW, label smoothing 0.1, batch 64, accuracy tracked), timed interleaved so machine load hits
all alike:

- ``loader``: BackwardLearner on a DataLoader over a plain ``TensorDataset`` (per-sample
  indexing, then ``default_collate`` stacks the rows): what the digits job did before;
- ``fast``: BackwardLearner on ``distlearn.data``'s loaders (``TensorBatches``, prepared by
  ``prepare_loader`` as the learner does: each pass's indices as one tensor, rows gathered at
  once and handed out as slices, inside Accelerate's own prepared loader);
- ``sliced``: the same training steps written by hand, each batch sliced from one permuted
  tensor (no DataLoader at all): the floor the loaders are measured against.

The data is split once, before any timing; each run builds its loader from the split arrays,
its learner (or Accelerator), model and optimizer. Also times fetching the batches alone (no
training), per batch. Prints the median wall and CPU time of each and the ratios loader/sliced
and fast/sliced (of medians, of minimums, and the median of adjacent-run ratios). On a shared
machine, trust the CPU-time ratios of adjacent runs most.

    OMP_NUM_THREADS=1 python benchmarks/bench_loader.py [--repeats 7] [--epochs 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from distlearn.runtime.accelerator import prepare_loader
from distlearn.data import SklearnDataset, make_loaders
from distlearn.training.learner import BackwardLearner
from distlearn.metrics import Accuracy
from distlearn.models import MLP

BATCH = 64


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return MLP(64, 10, hidden_sizes=[256], dropout=0.1)


def learner(epochs: int) -> BackwardLearner:
    return BackwardLearner(
        n_epochs=epochs,
        loss_configs={"loss_class": "torch.nn.CrossEntropyLoss", "loss_parameters": {"label_smoothing": 0.1}},
        optimizer_configs={"optimizer_class": "torch.optim.AdamW",
                           "optimizer_parameters": {"lr": 1e-3, "weight_decay": 1e-2}},
        display_every_n_steps=50,
    )


def run_learner(epochs: int, loader: DataLoader) -> float:
    record = learner(epochs).train(make_model(), loader, metric=Accuracy(), test_check=False, disable_tqdm=True)
    return record["training"][epochs - 1]["train_score"]


def run_sliced(epochs: int, x: torch.Tensor, y: torch.Tensor) -> float:
    """The same steps by hand on batches sliced from one tensor (accuracy counted, reduced once per epoch)."""
    accelerator = learner(epochs).accelerator()
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        xs, ys = x[order], y[order]
        correct = torch.zeros((), dtype=torch.float64)
        for start in range(0, len(x), BATCH):
            xb, yb = xs[start:start + BATCH], ys[start:start + BATCH]
            output = model(xb)
            loss = F.cross_entropy(output, yb, label_smoothing=0.1)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            correct += (output.detach().argmax(-1) == yb).sum()
        accuracy = (correct / len(x)).item()
    return accuracy


def iterate_only(loaders: dict, x: torch.Tensor, y: torch.Tensor, epochs: int) -> dict[str, float]:
    """Microseconds per batch of only fetching the batches: each loader prepared as the learner
    prepares it (``prepare_loader``: Accelerate's seedable sampler, set_epoch) against slicing a
    permuted tensor."""
    accelerator = learner(1).accelerator()
    out = {}
    for name, make in loaders.items():
        loader = prepare_loader(accelerator, make())
        start = time.perf_counter()
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            for _ in loader:
                pass
        out[name] = 1e6 * (time.perf_counter() - start) / (epochs * len(loader))
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        xs, ys = x[order], y[order]
        for i in range(0, len(x), BATCH):
            xs[i:i + BATCH], ys[i:i + BATCH]
    out["sliced"] = 1e6 * (time.perf_counter() - start) / (epochs * math_ceil(len(x), BATCH))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)

    data = SklearnDataset("digits", batch_size=BATCH, seed=0)
    arrays = data.split()  # once, outside the timed runs: every variant trains on these same rows
    x, y = torch.from_numpy(arrays[0]), torch.from_numpy(arrays[2])

    def fast_loader() -> DataLoader:
        """What ``data.load()["train_loader"]`` is, built from the split arrays (as ``plain_loader`` is)."""
        return make_loaders(*arrays, batch_size=BATCH, shuffle=True, seed=0)["train_loader"]

    def plain_loader() -> DataLoader:
        return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True,
                          generator=torch.Generator().manual_seed(0))

    runs = {
        "loader": lambda: run_learner(args.epochs, plain_loader()),
        "fast": lambda: run_learner(args.epochs, fast_loader()),
        "sliced": lambda: run_sliced(args.epochs, x, y),
    }
    for run in runs.values():  # warm-up
        run()
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}  # this process's CPU time: less sensitive to load
    for _ in range(args.repeats):
        for name, run in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    steps = args.epochs * math_ceil(len(x), BATCH)
    print(f"digits, {len(x)} training rows, batch {BATCH}, {args.epochs} epochs ({steps} steps), "
          f"{args.repeats} interleaved repeats")
    fetch = iterate_only({"loader": plain_loader, "fast": fast_loader}, x, y, 20)
    print("fetching only, per batch: " + ", ".join(f"{name} {us:.0f} us" for name, us in fetch.items()))
    for label, times in (("wall", wall), ("cpu", cpu)):
        for name in runs:
            median = statistics.median(times[name])
            print(f"{label:4s} {name:6s} median {median:.3f} s ({1e3 * median / steps:.3f} ms/step), "
                  f"min {min(times[name]):.3f} s")
        for name in ("loader", "fast"):
            of_medians = statistics.median(times[name]) / statistics.median(times["sliced"])
            of_mins = min(times[name]) / min(times["sliced"])
            pairs = statistics.median(a / b for a, b in zip(times[name], times["sliced"]))
            print(f"{label:4s} ratio {name}/sliced: of medians {of_medians:.3f}, of mins {of_mins:.3f}, "
                  f"median of adjacent pairs {pairs:.3f}")


def math_ceil(n: int, d: int) -> int:
    return -(-n // d)


if __name__ == "__main__":
    main()
