"""Clean exits: many successful two-process runs in a row must all exit 0.

About one in nine successful two-process runs used to end with "terminate called
without an active exception" (exit -6, SIGABRT) after the summary, and some hung in
gloo's ProcessGroup destructor (a DDP model freed after the group was destroyed).
A run that takes over 120 s counts as a hang. This runs
``distlearn train`` (digits, W&B offline, checkpoints on) RUNS times under torchrun
with ACCELERATE_USE_CPU=1 and counts the exit codes and the abort message.

    python benchmarks/soak_clean_exit.py [--runs 30] [--procs 2] [--epochs 2] [--launcher torchrun|accelerate]

Exits 1 when any run did not exit 0.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def command(launcher: str, procs: int, out: Path, epochs: int) -> list[str]:
    if launcher == "torchrun":
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--standalone"]
    else:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(procs),
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    return [*launch, "-m", "distlearn", "train", f"learner_configs.learner_parameters.n_epochs={epochs}",
            f"run.output_dir={out}", "-q"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--launcher", choices=["torchrun", "accelerate"], default="torchrun")
    args = parser.parse_args()

    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    codes: collections.Counter = collections.Counter()
    aborts = 0
    began = time.time()
    with tempfile.TemporaryDirectory(prefix="distlearn-soak-") as tmp:
        env["WANDB_DIR"] = tmp
        for i in range(args.runs):
            out = Path(tmp) / f"run{i}"
            try:
                done = subprocess.run(command(args.launcher, args.procs, out, args.epochs), env=env,
                                      capture_output=True, text=True, timeout=120)
            except subprocess.TimeoutExpired as exc:  # a hang (e.g. in the group's teardown) counts as a failure
                stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
                done = subprocess.CompletedProcess(exc.cmd, "hang", "", stderr)
            aborted = "terminate called" in done.stderr
            aborts += aborted
            codes[done.returncode] += 1
            status = "ok" if done.returncode == 0 and not aborted else "FAILED"
            print(f"run {i + 1:3d}/{args.runs}: exit {done.returncode}{' (abort message)' if aborted else ''} {status}",
                  flush=True)
            if status != "ok":  # the first lines name the cause; the launcher's summary comes last
                lines = [line for line in done.stderr.splitlines() if "Traceback" in line or "Error" in line
                         or "terminate called" in line or "distlearn:" in line]
                print("\n".join(lines[:20]) or done.stderr[-2000:], file=sys.stderr)
    print(f"{args.runs} runs of {args.procs} processes ({args.launcher}) in {time.time() - began:.0f} s: "
          f"exit codes {dict(codes)}, 'terminate called' in {aborts}")
    return 0 if codes == {0: args.runs} and not aborts else 1


if __name__ == "__main__":
    sys.exit(main())
