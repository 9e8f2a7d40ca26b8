"""Peak memory with and without activation checkpointing on the charlm config's model, on this CPU.

Two measures, each as a ratio (checkpointed / plain; below 1 is memory saved):
  - activations kept for backward: the bytes of the distinct storages autograd saves during one
    training forward (counted with ``torch.autograd.graph.saved_tensors_hooks``; a checkpointed
    block keeps only its input), exact and the same on every run;
  - peak RSS: each variant in a fresh process (one thread, glibc's mmap threshold fixed so freed
    tensors leave RSS) runs ``--steps`` training steps; its peak resident memory (``VmHWM``, reset just before)
    minus the resident memory before the first step. The two variants alternate, ``--repeats``
    times each; medians.

The model and batch are charlm's (``configs/charlm.yaml``: d_model 64, 2 blocks, block_size 64,
32 windows per batch); ``--batch`` scales the batch (activations grow with it, weights do not).

    python benchmarks/bench_activation_checkpointing.py [--batch 32] [--repeats 3] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch


def charlm_model_and_batch(batch: int, checkpointing: bool) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The charlm config's CharTransformer (checkpointing its blocks or not) and one batch of ``batch`` windows."""
    from distlearn.experiment.config import build_experiment, load_config

    at = "learner_configs.learner_parameters"
    overrides = ["data_configs.data_parameters.max_chars=200000", f"data_configs.data_parameters.batch_size={batch}",
                 f"{at}.gradient_checkpointing={str(checkpointing).lower()}", "run.tracking.backend=none"]
    experiment = build_experiment(load_config("charlm", overrides))
    x, y = next(iter(experiment.data_loaders["train_loader"]))
    model = experiment.model
    if checkpointing:
        model.gradient_checkpointing_enable()
    return model.train(), x, y


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps from one forward for the backward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.nn.Parameter):  # the weights are there anyway
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).float().mean()
    loss.backward()
    return sum(storages.values())


def child(batch: int, checkpointing: bool, steps: int) -> None:
    """In a fresh process: peak RSS growth over ``steps`` training steps, printed as JSON."""
    torch.set_num_threads(1)
    model, x, y = charlm_model_and_batch(batch, checkpointing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    optimizer.zero_grad(set_to_none=False)  # the gradients' memory before the baseline: weights-sized, in both
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # its state allocated before the baseline too
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to now: building the experiment's own peak does not count
    before = _status_kib("VmRSS")
    for _ in range(steps):
        loss = loss_fn(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
    peak = _status_kib("VmHWM")
    print(json.dumps({"growth_kib": peak - before}))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", choices=("plain", "checkpointed"))
    args = parser.parse_args()
    if args.child:
        child(args.batch, args.child == "checkpointed", args.steps)
        return
    torch.set_num_threads(1)
    saved = {}
    for name in ("plain", "checkpointed"):
        model, x, _ = charlm_model_and_batch(args.batch, name == "checkpointed")
        saved[name] = saved_activation_bytes(model, x)
    growth: dict[str, list[int]] = {"plain": [], "checkpointed": []}
    # A fixed mmap threshold: glibc then maps every large tensor on its own and unmaps it when freed, so
    # RSS follows the live tensors (its default raises the threshold after frees, and freed heap stays resident).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    for _ in range(args.repeats):
        for name in growth:
            out = subprocess.run([sys.executable, __file__, "--child", name, "--batch", str(args.batch),
                                  "--steps", str(args.steps)], capture_output=True, text=True, check=True, env=env)
            growth[name].append(json.loads(out.stdout.strip().splitlines()[-1])["growth_kib"])
    print(f"charlm model, batch {args.batch} x 64 tokens, {args.steps} steps, {args.repeats} repeats, "
          f"torch {torch.__version__}")
    print(f"activations kept for backward: plain {saved['plain'] / 2**20:.1f} MiB, checkpointed "
          f"{saved['checkpointed'] / 2**20:.1f} MiB, ratio {saved['checkpointed'] / saved['plain']:.2f}")
    plain, ckpt = statistics.median(growth["plain"]), statistics.median(growth["checkpointed"])
    print(f"peak RSS growth over the steps (median): plain {plain / 1024:.1f} MiB, checkpointed "
          f"{ckpt / 1024:.1f} MiB, ratio {ckpt / max(plain, 1):.2f} (each: {growth})")


if __name__ == "__main__":
    main()
