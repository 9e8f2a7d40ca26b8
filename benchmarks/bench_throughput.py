"""What measuring throughput costs, and what it reports: this checkout against a baseline checkout.

Usage::

    python benchmarks/bench_throughput.py --baseline /work/main --repeats 5

Each repeat trains the same MLP (synthetic data, 2 epochs, 1 process) once with the baseline's
code and once with this checkout's, interleaved, in fresh interpreters (``PYTHONPATH`` picks the
tree). Printed: the median seconds of an epoch's training pass (``time_cost``) on each side and
their ratio (this / baseline: the timers' and the FLOP count's cost), then this checkout's
``throughput`` block of the last epoch with ``peak_tflops`` set to the float32 matmul rate
measured in the same interpreter (so MFU is against this machine's own peak).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUN = r"""
import json, time, torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from distlearn import BackwardLearner
torch.manual_seed(0)
data = TensorDataset(torch.randn(4096, 256), torch.randint(0, 10, (4096,)))
model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
learner = BackwardLearner(n_epochs=2, loss=nn.CrossEntropyLoss(), display_every_n_steps=8,
                          optimizer_configs={"optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lr": 0.01}})
kwargs = {}
try:
    from distlearn.training.throughput import Monitor
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    best = 0.0
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(8):
            a @ b
        best = max(best, 8 * 2 * 512**3 / (time.perf_counter() - began) / 1e12)
    kwargs["monitor"] = Monitor(peak_tflops=best)
except ImportError:
    pass
record = learner.train(model, DataLoader(data, batch_size=64, shuffle=True), disable_tqdm=True, **kwargs)
last = record["training"][1]
print(json.dumps({"time_cost": last["time_cost"], "throughput": last.get("throughput")}))
"""


def run(tree: Path) -> dict:
    """One training run with ``tree``'s distlearn, in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    out = subprocess.run([sys.executable, "-c", RUN], env=env, capture_output=True, text=True, timeout=600,
                         cwd="/")
    if out.returncode:
        raise SystemExit(f"{tree}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout without the throughput block")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    base, this, last = [], [], None
    for _ in range(args.repeats):
        base.append(run(args.baseline)["time_cost"])
        last = run(ROOT)
        this.append(last["time_cost"])
    b, t = statistics.median(base), statistics.median(this)
    print(f"epoch training pass, median of {args.repeats}: baseline {b:.3f} s, this {t:.3f} s, ratio {t / b:.3f}")
    print(json.dumps(last["throughput"], indent=1))


if __name__ == "__main__":
    main()
