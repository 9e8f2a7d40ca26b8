"""Helpers for test_elastic.py and benchmarks/soak_elastic_restart.py: a run killed under torchrun with restarts.

Not a test module (no test_ prefix): the run on 2 CPU processes of configs/wine.yaml, its
reference, and one attempt that SIGKILLs a worker mid-run and checks the restarted launch.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import launching
from launching import ROOT, launch_env, without_clocks

ARGS = ["--quiet", str(ROOT / "configs" / "wine.yaml"), "run.tracking.backend=none", "run.checkpoint.every_n_steps=3",
        "learner_configs.learner_parameters.n_epochs=8", "run.timeout_s=30"]
KILL_AFTER = 15  # SIGKILL a worker once a checkpoint of at least this optimizer step exists (5 steps per epoch)


def _outputs(folder: Path) -> tuple[dict, str]:
    record = json.loads((folder / "record.json").read_text())
    return without_clocks(record), hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def reference(base: Path) -> tuple[dict, str]:
    """The uninterrupted run's record (clocks left out) and model file hash.

    Its launcher is not what the restart test checks: in a test session its 2 processes are forked warm
    (tests/warm.py), elsewhere (the soak) launched by launch/torchrun.sh as the attempts are.
    """
    base.mkdir(parents=True, exist_ok=True)
    if launching.WARM:
        import warm

        done = warm.run([sys.executable, "-m", "distlearn", "train", *ARGS, f"run.output_dir={base / 'run'}"],
                        cwd=base, env=launch_env(), timeout=300, procs=2)
    else:
        done = subprocess.run([str(ROOT / "launch" / "torchrun.sh"), *ARGS, f"run.output_dir={base / 'run'}"], cwd=base,
                              env=launch_env(DISTLEARN_CPU_PROCS="2", DISTLEARN_GPUS="0"), capture_output=True,
                              text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return _outputs(base / "run")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:  # the process just ended
        return []


def _leaves(pid: int) -> list[int]:
    """The processes under ``pid`` that have none of their own (the training processes), oldest first."""
    children = _children(pid)
    return [leaf for child in children for leaf in (_leaves(child) or [child])]


def killed_and_restarted(base: Path, ref: tuple[dict, str], plain: bool = False) -> tuple[bool, str]:
    """One attempt: kill a worker mid-run under MAX_RESTARTS=1; returns (passed, why not)."""
    base.mkdir(parents=True, exist_ok=True)
    if plain:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--max-restarts", "1", "--monitor_interval", "0.2", "-m", "distlearn", "train", *ARGS]
        env = launch_env()
    else:
        cmd, env = [str(ROOT / "launch" / "torchrun.sh"), *ARGS], launch_env(DISTLEARN_CPU_PROCS="2", DISTLEARN_GPUS="0", MAX_RESTARTS="1")
    log = base / "launch.log"
    with open(log, "w") as out:
        launch = subprocess.Popen(cmd, cwd=base, env=env, stdout=out, stderr=subprocess.STDOUT)
        killed, deadline = None, time.time() + 300
        while launch.poll() is None and killed is None and time.time() < deadline:
            steps = [int(m.group(1)) for f in glob.glob(str(base / "runs" / "*" / "checkpoints" / "step-*"))
                     if (m := re.search(r"step-(\d+)$", f))]
            if steps and max(steps) >= KILL_AFTER:
                workers = _leaves(launch.pid)  # torchrun's workers: under the script's shell and its launcher
                if workers:
                    killed = int(workers[-1])
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.02)
        try:
            code = launch.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            launch.kill()
            return False, "the launch did not finish in time"
    text = log.read_text()
    if killed is None:
        return False, "the run ended before a worker could be killed"
    if code != 0:
        return False, f"exit {code}: {text[-1500:]}"
    folders = list((base / "runs").iterdir())
    if len(folders) != 1:
        return False, f"{len(folders)} run folders: {sorted(f.name for f in folders)}"
    resumed = re.search(r"restart 1 of this launch: resuming from checkpoint \S+step-(\d+)", text)
    if not resumed or int(resumed.group(1)) < KILL_AFTER:
        return False, "the restart did not resume from the newest checkpoint"
    if _outputs(folders[0]) != ref:
        return False, "the record or the model differ from the uninterrupted run's"
    return True, ""
