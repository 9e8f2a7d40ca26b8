"""BackwardLearner against a hand-written Accelerate loop doing the same work.

Same model, data, seed, optimizer and Accelerator; both track the epoch's
sample-weighted loss and accuracy and reduce them once per epoch. Runs are
interleaved (learner, hand, learner, hand, ...) so drifts in machine load hit
both alike. Prints the median time of each and their ratio.

    python benchmarks/bench_learner.py [--repeats 7] [--epochs 3] [--n 16384] [--batch 128]
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
        --mixed_precision no --dynamo_backend no benchmarks/bench_learner.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distlearn.training.learner import BackwardLearner
from distlearn.metrics import Accuracy


def make_data(n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 64, generator=g)
    y = (x @ torch.randn(64, 10, generator=g)).argmax(1)
    return TensorDataset(x, y)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def optimizer_configs() -> dict:
    return {"optimizer_class": "torch.optim.AdamW", "optimizer_parameters": {"lr": 1e-3}}


def run_learner(learner: BackwardLearner, loader: DataLoader) -> tuple[float, float]:
    record = learner.train(make_model(), loader, metric=Accuracy(), test_check=False, disable_tqdm=True)
    last = record["training"][learner.n_epochs - 1]
    return last["train_loss"], last["train_score"]


def run_hand(accelerator, loader: DataLoader, epochs: int) -> tuple[float, float]:
    """The loop one would write by hand with Accelerate, tracking the same numbers."""
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        model.train()
        totals = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # loss sum, correct, count
        for x, y in loader:
            output = model(x)
            loss = F.cross_entropy(output, y)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            totals[0] += loss.detach() * y.shape[0]
            totals[1] += (output.argmax(-1) == y).sum()
            totals[2] += y.shape[0]
        totals = accelerator.reduce(totals, "sum")  # (padding duplicates counted: the hand loop's usual shortcut)
        loss_value, accuracy = (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()
    return loss_value, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=128, help="per-process batch size")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    learner = BackwardLearner(n_epochs=args.epochs, loss=nn.CrossEntropyLoss(), optimizer_configs=optimizer_configs())
    accelerator = learner.accelerator()
    # Both loops get the same kind of loader; the learner prepares its own copy of it.
    make_loader = lambda: DataLoader(make_data(args.n), batch_size=args.batch, shuffle=True)  # noqa: E731
    run_learner(learner, make_loader())  # warm-up both paths
    run_hand(accelerator, make_loader(), 1)

    wall: dict[str, list[float]] = {"learner": [], "hand": []}
    cpu: dict[str, list[float]] = {"learner": [], "hand": []}  # this process's CPU time: less sensitive to other load
    for _ in range(args.repeats):
        for name in ("learner", "hand"):
            loader = make_loader()
            accelerator.wait_for_everyone()
            start, start_cpu = time.perf_counter(), time.process_time()
            result = run_learner(learner, loader) if name == "learner" else run_hand(accelerator, loader, args.epochs)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    steps = args.epochs * len(make_loader()) // accelerator.num_processes
    if accelerator.is_main_process:
        print(f"processes {accelerator.num_processes}, {steps} steps per run, {args.repeats} interleaved repeats")
        for label, times in (("wall", wall), ("cpu", cpu)):
            learner_s, hand_s = statistics.median(times["learner"]), statistics.median(times["hand"])
            pairs = statistics.median(a / b for a, b in zip(times["learner"], times["hand"]))  # adjacent: drift cancels
            print(
                f"{label:4s} learner {learner_s:.3f} s ({1e3 * learner_s / steps:.3f} ms/step), "
                f"hand {hand_s:.3f} s ({1e3 * hand_s / steps:.3f} ms/step); ratio learner/hand: "
                f"of medians {learner_s / hand_s:.3f}, of mins {min(times['learner']) / min(times['hand']):.3f}, "
                f"median of adjacent pairs {pairs:.3f}"
            )
        print(f"last run: loss {result[0]:.4f}, accuracy {result[1]:.4f}")


if __name__ == "__main__":
    main()
