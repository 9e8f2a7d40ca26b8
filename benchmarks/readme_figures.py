"""The README's per-config figures, measured: test score, training time and wall time of shipped configs.

    python benchmarks/readme_figures.py                      # digits, digits_cnn (seeds 0-2), charlm
    python benchmarks/readme_figures.py --threads 2 --configs digits_cnn

Each run is ``python -m distlearn train CONFIG run.seed=S`` on 1 process with tracking off, in a
temporary folder, with ``--threads`` intra-op threads (results can differ with the thread count:
float sums are ordered differently). It prints one line per run: the final test score (and, for a
language model, the perplexity per epoch), the training time (the epochs' ``time_cost``) and the
wall time including start-up, read from the run's ``record.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = [("digits", 0), ("digits", 1), ("digits", 2), ("digits_cnn", 0), ("digits_cnn", 1),
                ("digits_cnn", 2), ("charlm", 0)]


def run(config: str, seed: int, threads: int, folder: Path) -> tuple[dict, float]:
    """Train ``config`` with ``seed``; returns (record, wall seconds)."""
    out = folder / f"{config}-{seed}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    begin = time.perf_counter()
    subprocess.run([sys.executable, "-m", "distlearn", "train", config, "-q", f"run.seed={seed}",
                    f"run.output_dir={out}", "run.tracking.backend=none"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return json.loads((out / "record.json").read_text()), time.perf_counter() - begin


def line(config: str, seed: int, record: dict, wall: float) -> str:
    """One printed line: score, the test loss per epoch for a language model, training and wall time."""
    epochs = [record["training"][k] for k in sorted(record["training"], key=int)]
    last = epochs[-1]["test_result"]
    training = sum(e["time_cost"] for e in epochs)
    text = f"{config:12} seed {seed}  {last['metric_name']} {last['test_score']:.4f}"
    if "perplexity" in last.get("test_scores", {}):
        losses = " / ".join(f"{e['test_result']['test_loss']:.3f}" for e in epochs)
        text += f"  test loss {losses}, perplexity {math.exp(last['test_loss']):.2f}"
    return text + f"  {len(epochs)} epochs, {training:.1f} s of training, {wall:.1f} s wall"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--configs", nargs="*", help="only these configs (default: all of the default runs)")
    args = parser.parse_args()
    runs = [(c, s) for c, s in DEFAULT_RUNS if not args.configs or c in args.configs]
    print(f"1 process, {args.threads} thread(s), {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="readme-figures-") as tmp:
        for config, seed in runs:
            record, wall = run(config, seed, args.threads, Path(tmp))
            print(line(config, seed, record, wall), flush=True)


if __name__ == "__main__":
    main()
