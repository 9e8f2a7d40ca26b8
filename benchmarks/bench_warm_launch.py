"""A one-process `distlearn train` started cold beside the same command forked warm (tests/warm.py).

    python benchmarks/bench_warm_launch.py [--runs 3] [--epochs 1]

Prints the CPU seconds (user + system, the process and its children) and wall seconds of each,
and their ratio: the cost the test suite saves per one-process launch. CPU time is the figure
to read on a shared machine; wall time moves with the load.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from launching import launch_env  # noqa: E402


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _measure(run, command: list[str], cwd: str) -> tuple[float, float]:
    """(CPU s, wall s) of one launch; ``run`` is subprocess.run or warm.run."""
    cpu, began = _cpu_of_children(), time.monotonic()
    done = run(command, cwd=cwd, env=launch_env(), capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - began
    if done.returncode != 0:
        raise SystemExit(f"{command} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return _cpu_of_children() - cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    from multiprocessing import forkserver

    import warm
    from dist_pool import fork_context

    fork_context()  # the fork server's own imports are paid once per test session, not per launch
    rows = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory() as scratch:
        for i in range(args.runs):
            for name, run in (("cold", subprocess.run), ("warm", warm.run)):
                command = [sys.executable, "-m", "distlearn", "train", "-q", "run.tracking.backend=none",
                           f"learner_configs.learner_parameters.n_epochs={args.epochs}",
                           f"run.output_dir={os.path.join(scratch, f'{name}{i}')}"]
                if name == "warm":  # forked children are reaped by the fork server: count them through it
                    rows[name].append(_measure_warm(run, command, scratch))
                else:
                    rows[name].append(_measure(run, command, scratch))
    forkserver._forkserver._stop()
    mean = {name: [sum(v) / len(v) for v in zip(*values)] for name, values in rows.items()}
    print(f"one-process distlearn train, digits, {args.epochs} epoch(s), mean of {args.runs} (load {os.getloadavg()[0]:.1f})")
    for name in ("cold", "warm"):
        print(f"  {name}: {mean[name][0]:6.2f} s CPU  {mean[name][1]:6.2f} s wall")
    print(f"  cold / warm: {mean['cold'][0] / mean['warm'][0]:.1f}x CPU, {mean['cold'][1] / mean['warm'][1]:.1f}x wall")


def _measure_warm(run, command: list[str], cwd: str) -> tuple[float, float]:
    """(CPU s, wall s) of a warm launch: the fork server, not we, reaps it, so the child writes its own CPU time."""
    began = time.monotonic()
    with tempfile.NamedTemporaryFile("r", suffix=".cpu") as cpu_file:
        env_command = [sys.executable, str(Path(__file__).resolve()), "--child", cpu_file.name, *command[1:]]
        done = run(env_command, cwd=cwd, env=launch_env(), capture_output=True, text=True, timeout=600)
        wall = time.monotonic() - began
        if done.returncode != 0:
            raise SystemExit(f"{command} exited {done.returncode}:\n{done.stderr[-3000:]}")
        return float(Path(cpu_file.name).read_text() or "nan"), wall


def child(cpu_path: str, argv: list[str]) -> None:
    """In the warm child: run ``python -m distlearn ARGV`` and write this process's CPU seconds."""
    import atexit
    import runpy

    def report() -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        Path(cpu_path).write_text(str(usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime))

    atexit.register(report)
    sys.argv = [argv[1], *argv[2:]]
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
    else:
        main()
