"""Launching a run in real processes from a test: its environment, the launch command, its record without clocks.

Not a test module (no test_ prefix). Used by the tests that start ``python``, ``torchrun``,
``accelerate launch`` or a launch script, and by benchmarks/soak_elastic_restart.py (through
elastic_restart.py), so it imports nothing from conftest.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "scripts"

# Left behind by an outer launch (the tests run under torchrun, SLURM, a launch script), these
# would make the child join the wrong group, reuse another run's folder or change its precision.
OUTER_LAUNCH = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE",
                "DISTLEARN_RUN_ID", "SLURM_JOB_ID", "ACCELERATE_MIXED_PRECISION", "MIXED_PRECISION")
# Tests set this (tests/conftest.py): one-process launches are then forked warm, not started cold.
WARM = False
# The knobs of tests/scripts/*.py: only what the test itself passes may count.
SCRIPT_KNOBS = ("RANK_ONLY", "PER_PROCESS", "ATTEMPT", "ACCUM", "RESUME_BATCH", "N_SAMPLES", "N_EPOCHS",
               "COMPILE")


def launch_env(**extra: str) -> dict[str, str]:
    """The environment of a launched run.

    This checkout and tests/scripts first on PYTHONPATH, one intra-op thread per process (on a busy
    2-core machine more threads made a step many times slower), CPU processes, W&B offline, the
    launch scripts' ``PYTHON`` this interpreter; nothing of an outer launch. ``extra`` wins over all.
    """
    env = {k: v for k, v in os.environ.items() if k not in OUTER_LAUNCH + SCRIPT_KNOBS}
    path = [str(ROOT), str(SCRIPTS)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update(OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", WANDB_MODE="offline", PYTHON=sys.executable,
               PYTHONPATH=os.pathsep.join(path))
    env.update(extra)
    return env


def script_command(procs: int, script: Path, *args: str) -> list[str]:
    """``script`` on ``procs`` processes: plain python for 1, torchrun (standalone, gloo on CPU) for more."""
    if procs == 1:
        return [sys.executable, str(script), *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--standalone",
            "--monitor_interval", "0.2", str(script), *args]


def run_script(script: Path, procs: int, run_dir: Path, result: Path, kill: str | None = None,
               **env: str) -> subprocess.CompletedProcess:
    """A run of a tests/scripts resume script (``RUN_DIR RESULT [KILL]``) on ``procs`` processes, to its end.

    In a test session (the fork server is there) the processes are forked warm (tests/warm.py: one
    process, or several as one hand launch that stops the others when one fails, as torchrun does):
    these scripts' claims are about the library, not the launcher. Elsewhere
    (benchmarks/soak_elastic_restart.py) plain python, or torchrun for several.
    """
    args = [str(run_dir), str(result)] + ([kill] if kill else [])
    if WARM:
        import warm

        return warm.run(script_command(1, script, *args), env=launch_env(**env), timeout=240, procs=procs)
    return subprocess.run(script_command(procs, script, *args), env=launch_env(**env), capture_output=True,
                          text=True, timeout=240)


def without_clocks(record):
    """The record with every clock reading (times, durations, speeds, the throughput block) left out."""
    if isinstance(record, dict):
        return {k: without_clocks(v) for k, v in record.items()
                if "time" not in k and k not in ("samples_per_second", "preparation", "throughput")}
    return record
