"""launch/: train.sh (accelerate launch), torchrun.sh and slurm.sbatch, really launched on CPU.

Each multi-process run trains the digits config for N_EPOCHS epochs with 2 processes and a
per-process batch of 32, so that every optimizer step sees the same 64 rows as the one-process
baseline (batch 64): the test scores must agree within TOLERANCE (dropout masks differ between
1 and 2 processes, so not to the last digit). slurm.sbatch runs as a real script with stand-ins
for `srun` (one copy of the command per "node", with its own SLURM_NODEID) and `scontrol`:
two accelerate launchers on this host, node ranks 0 and 1, meeting in a c10d rendezvous.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import warm
from test_cli import (
    EPOCHS,
    NO_TRACKING,
    REPO,
    baseline_run,
    final_test_score,
    run_command,
    run_env,
)

LAUNCH = REPO / "launch"
HALF_BATCH = "data_configs.data_parameters.batch_size=32"
TOLERANCE = 0.02  # test accuracy, 360 test rows: 7 rows


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    return baseline_run(tmp_path_factory)


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def script_env(**extra: str) -> dict[str, str]:
    """For the scripts: no GPU hints from the caller's environment."""
    env = run_env(**extra)
    for key in ("CUDA_VISIBLE_DEVICES", "DISTLEARN_GPUS", "NUM_PROCESSES", "NPROC_PER_NODE", "ACCELERATE_CONFIG"):
        if key not in extra:
            env.pop(key, None)
    return env


def check_same_score(run_dir: Path, baseline: Path, result: subprocess.CompletedProcess, processes: int) -> None:
    assert result.returncode == 0, result.stderr[-5000:]
    lines = result.stdout.strip().splitlines()
    assert f"{processes} processes on cpu" in lines[0], lines[0]
    assert lines[-1] == f"Output directory: {run_dir}"
    assert final_test_score(run_dir) == pytest.approx(final_test_score(baseline), abs=TOLERANCE)
    ours = json.loads((run_dir / "record.json").read_text())["training"]
    theirs = json.loads((baseline / "record.json").read_text())["training"]
    assert ours.keys() == theirs.keys()
    assert ours["0"]["samples"] == theirs["0"]["samples"] == 1437  # each sample once, not once per process
    last = str(len(ours) - 1)
    assert ours[last]["train_loss"] == pytest.approx(theirs[last]["train_loss"], rel=0.05)


# --------------------------------------------------------------------------- the scripts themselves


@pytest.mark.parametrize("script", ["train.sh", "torchrun.sh", "slurm.sbatch"])
def test_scripts_are_valid_bash_with_strict_mode_and_documented_settings(script):
    path = LAUNCH / script
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    text = path.read_text()
    assert "set -euo pipefail" in text
    header = text.split("set -euo pipefail")[0]
    for setting in {"train.sh": ["DISTLEARN_CPU_PROCS", "NUM_PROCESSES", "MAIN_PROCESS_PORT", "PYTHON"],
                    "torchrun.sh": ["DISTLEARN_CPU_PROCS", "NPROC_PER_NODE", "MAX_RESTARTS", "RDZV_ENDPOINT"],
                    "slurm.sbatch": ["GPUS_PER_NODE", "DISTLEARN_CPU_PROCS", "MAIN_PROCESS_PORT"]}[script]:
        assert f"#   {setting}" in header, f"{setting} is not documented at the top of {script}"


def _dry(script: str, *args: str, **env: str) -> str:
    result = subprocess.run(["bash", str(LAUNCH / script), *args], env=script_env(DRY_RUN="1", **env),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_processes_are_picked_from_the_machine():
    cpu = _dry("train.sh", "configs/wine.yaml", "run.seed=1")
    assert cpu.startswith("ACCELERATE_USE_CPU=1 ") and " --cpu --num_processes 1 " in cpu
    assert cpu.rstrip().endswith("-m distlearn train configs/wine.yaml run.seed=1")
    two = _dry("train.sh", DISTLEARN_CPU_PROCS="2")
    assert two.startswith("ACCELERATE_USE_CPU=1 ") and "--multi_gpu --num_processes 2 " in two  # the form that works
    gpus = _dry("train.sh", CUDA_VISIBLE_DEVICES="0,1,3")
    assert "ACCELERATE_USE_CPU" not in gpus and "--multi_gpu --num_processes 3 " in gpus
    assert "--num_processes 2 " in _dry("train.sh", DISTLEARN_GPUS="4", NUM_PROCESSES="2")
    assert "ACCELERATE_USE_CPU=1" in _dry("train.sh", CUDA_VISIBLE_DEVICES="")  # every GPU hidden

    torchrun = _dry("torchrun.sh", "x=1", DISTLEARN_CPU_PROCS="2", MAX_RESTARTS="3")
    assert "--nproc_per_node 2 --max_restarts 3 --standalone -m distlearn train x=1" in torchrun
    nodes = _dry("torchrun.sh", NNODES="2", NODE_RANK="1", RDZV_ENDPOINT="node0:29400", DISTLEARN_GPUS="8")
    assert "--nproc_per_node 8 " in nodes and "--nnodes 2 --node_rank 1 --rdzv_backend c10d --rdzv_endpoint node0:29400" in nodes
    missing = subprocess.run(["bash", str(LAUNCH / "torchrun.sh")], env=script_env(NNODES="2"), capture_output=True, text=True)
    assert missing.returncode == 2 and "RDZV_ENDPOINT" in missing.stderr


# --------------------------------------------------------------------------- real launches


def test_two_processes_through_torchrun_sh_with_wandb_on_the_main_process_only(baseline, tmp_path):
    out = tmp_path / "run"
    env = script_env(DISTLEARN_CPU_PROCS="2", WANDB_MODE="offline")
    env.pop("WANDB_DIR", None)
    result = run_command(
        ["bash", str(LAUNCH / "torchrun.sh"), "digits", EPOCHS, HALF_BATCH, f"run.output_dir={out}", "-q"],
        tmp_path, env,
    )
    check_same_score(out, baseline, result, 2)
    assert len(list((out / "wandb").glob("offline-run-*/run-*.wandb"))) == 1  # one W&B run, not one per rank


def test_two_nodes_on_localhost_through_slurm_sbatch(baseline, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        "#!/usr/bin/env bash\n"
        "# stand-in for srun: run the command once per node of the allocation, all on this host\n"
        "while [[ $# -gt 0 && $1 == -* ]]; do shift; done\n"
        "pids=()\n"
        "for (( i = 0; i < SLURM_NNODES; i++ )); do SLURM_NODEID=$i SLURM_PROCID=$i \"$@\" & pids+=($!); done\n"
        "rc=0; for p in \"${pids[@]}\"; do wait \"$p\" || rc=$?; done; exit $rc\n"
    )
    (bin_dir / "scontrol").write_text(
        "#!/usr/bin/env bash\n# stand-in for `scontrol show hostnames LIST`: every node is this host\n"
        "for (( i = 0; i < SLURM_NNODES; i++ )); do echo 127.0.0.1; done\n"
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = script_env(
        PATH=f"{bin_dir}:{run_env()['PATH']}", SLURM_NNODES="2", SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="node[0-1]",
        MAIN_PROCESS_PORT=free_port(), RDZV_CONF="join_timeout=60",  # fail within the test's time if a node is lost
    )
    out = tmp_path / "run"
    result = run_command(
        ["bash", str(LAUNCH / "slurm.sbatch"), EPOCHS, HALF_BATCH, NO_TRACKING, f"run.output_dir={out}", "-q"],
        tmp_path, env,
    )
    assert "2 node(s) x 1 process(es), head node 127.0.0.1" in result.stderr
    check_same_score(out, baseline, result, 2)


def test_an_earlier_run_is_refused_on_every_rank_without_hanging(tmp_path):
    """2 ranks forked warm as one hand launch (tests/warm.py): the refusal is the library's, not the launcher's."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "record.json").write_text("earlier")
    result = warm.run([sys.executable, "-m", "distlearn", "train", EPOCHS, NO_TRACKING, f"run.output_dir={out}", "-q"],
                      cwd=tmp_path, env=run_env(ACCELERATE_USE_CPU="1"), timeout=120, procs=2)
    assert result.returncode != 0
    assert result.stderr.count("distlearn: error:") == 1 and "already holds an earlier run" in result.stderr
    assert [p.name for p in out.iterdir()] == ["record.json"] and (out / "record.json").read_text() == "earlier"


def test_ranks_started_with_different_world_sizes_both_say_so_and_exit_2(tmp_path):
    """By hand, rank 0 with WORLD_SIZE=2 and rank 1 with 3: each names both sizes at start, before any group."""
    port, procs = free_port(), []
    for rank, world in ((0, 2), (1, 3)):
        env = run_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=port, ACCELERATE_USE_CPU="1")
        procs.append(warm.Popen(  # two one-process commands, started by hand: forked warm (tests/warm.py)
            [sys.executable, "-m", "distlearn", "train", NO_TRACKING, f"run.output_dir={tmp_path / 'run'}",
             "run.timeout_s=60", "-q"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    try:
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    said = "disagree on WORLD_SIZE: rank 0 has WORLD_SIZE=2, rank 1 has WORLD_SIZE=3, rank 2 has not started."
    for rank, (p, (out, err)) in enumerate(zip(procs, results)):
        assert p.returncode == 2, err[-3000:]
        assert err.count("distlearn: error:") == 1 and said in err, err[-3000:]
        assert f"rank {rank} (WORLD_SIZE={rank + 2})" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_launch_read_from_the_environment_is_checked_only_with_several_processes_and_no_torchrun_agent():
    from distlearn.runtime import launch

    env = {"MASTER_ADDR": "h", "MASTER_PORT": "29500", "RANK": "1", "WORLD_SIZE": "3"}
    assert launch.env_rendezvous(env) == ("h", 29500, 1, 3)
    assert launch.env_rendezvous({**env, "WORLD_SIZE": "1"}) is None
    assert launch.env_rendezvous({**env, "TORCHELASTIC_RESTART_COUNT": "0"}) is None
    assert launch.env_rendezvous({**env, "RANK": ""}) is None and launch.env_rendezvous({**env, "RANK": "x"}) is None


@pytest.mark.parametrize(
    ("status", "restarts", "requeued"),
    [("interrupted", "0", True), ("interrupted", "10", False), ("completed", "0", False)],
)
def test_slurm_sbatch_resumes_into_the_jobs_folder_and_requeues_an_interrupted_run(tmp_path, status, restarts, requeued):
    """With stand-ins for srun (the run "ends" with the given record status) and scontrol (logs a requeue)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        "#!/usr/bin/env bash\n"
        "for a in \"$@\"; do [[ $a == run.output_dir=* ]] && out=${a#run.output_dir=}; done\n"
        "echo \"$out\" > \"$LOG_DIR/output_dir\"\n"
        "mkdir -p \"$out\" && printf '{\\n \"status\": \"%s\"\\n}\\n' \"$STATUS\" > \"$out/record.json\"\n"
        "[[ $STATUS == completed ]]\n"
    )
    (bin_dir / "scontrol").write_text(
        "#!/usr/bin/env bash\n"
        "if [[ $1 == requeue ]]; then echo \"$2\" >> \"$LOG_DIR/requeued\"; else echo 127.0.0.1; fi\n"
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = script_env(
        PATH=f"{bin_dir}:{run_env()['PATH']}", SLURM_NNODES="1", SLURM_JOB_NUM_NODES="1", SLURM_JOB_NODELIST="node0",
        SLURM_JOB_ID="77", SLURM_RESTART_COUNT=restarts, LOG_DIR=str(tmp_path), STATUS=status,
    )
    result = run_command(["bash", str(LAUNCH / "slurm.sbatch"), "configs/wine.yaml", "run.seed=1", "-q"], tmp_path, env)
    assert (tmp_path / "output_dir").read_text().strip() == "runs/wine-slurm-77"  # found again by a requeued job
    assert (result.returncode == 0) == (status == "completed")
    assert (tmp_path / "requeued").exists() == requeued, result.stderr
    if requeued:
        assert (tmp_path / "requeued").read_text().strip() == "77"


# --------------------------------------------------------------------------- stopping a launch


def _stop_a_launch(tmp_path: Path, script: str, signum: int, to_group: bool, out: Path) -> subprocess.CompletedProcess:
    """Start ``script`` on 2 CPU processes, send ``signum`` once the first checkpoint exists: to the
    script's process, or to its whole process group (what Ctrl-C in a terminal does)."""
    import os
    import signal
    import time

    env = script_env(DISTLEARN_CPU_PROCS="2", MAIN_PROCESS_PORT=free_port())
    proc = subprocess.Popen(
        ["bash", str(LAUNCH / script), "digits", "learner_configs.learner_parameters.n_epochs=200", HALF_BATCH,
         "run.checkpoint.every_n_steps=2", NO_TRACKING, f"run.output_dir={out}", "-q"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        # as from a terminal: a suite started in the background by a shell without job control inherits SIGINT
        # ignored, and the launch would inherit that (it then trained all its epochs, deaf to Ctrl-C)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while not any((out / "checkpoints").glob("step-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        (os.killpg if to_group else os.kill)(proc.pid, signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize(
    ("script", "signame", "to_group", "code"),
    [("train.sh", "SIGINT", True, 130), ("torchrun.sh", "SIGTERM", False, 143)],
)
def test_a_stopped_launch_exits_with_the_stop_code_without_a_traceback_and_says_how_to_resume(
        baseline, tmp_path, script, signame, to_group, code):
    """Stopped, then (train.sh) resumed by the pasted resume line to N_EPOCHS epochs: the two processes through
    train.sh end with the one-process baseline's score, each sample once per epoch (the resume is exact:
    test_checkpoint), so this run also carries "2 CPU processes through train.sh give the one-process score"."""
    import signal

    out = tmp_path / "run"
    result = _stop_a_launch(tmp_path, script, getattr(signal, signame), to_group, out)
    assert result.returncode == code, result.stderr[-5000:]
    assert "Traceback" not in result.stderr and "SignalException" not in result.stderr, result.stderr[-5000:]
    assert "error" not in result.stderr.lower(), result.stderr[-3000:]
    assert json.loads((out / "record.json").read_text())["status"] == "interrupted"
    lines = [ln for ln in result.stderr.splitlines() if f"distlearn: interrupted by {signame}" in ln]
    assert len(lines) == 1, result.stderr[-3000:]
    # the resume line keeps the launch (2 processes through the script), never a 1-process command
    assert f"resume with: DISTLEARN_CPU_PROCS=2 {LAUNCH / script} digits " in lines[0], lines[0]
    assert f"run.output_dir={out}" in lines[0]
    if script != "train.sh":
        return
    # the resume line, pasted (with fewer epochs), resumes on 2 processes, once, to the one-process score
    import shlex

    words = shlex.split(lines[0].split("resume with: ", 1)[1])
    settings = dict(w.split("=", 1) for w in words[:1])
    env = script_env(MAIN_PROCESS_PORT=free_port(), **settings)
    again = run_command([*words[1:], EPOCHS], tmp_path, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("resuming from checkpoint") == 1, again.stderr[-3000:]
    check_same_score(out, baseline, again, 2)  # "2 processes on cpu", 1437 samples an epoch, the baseline's score


# --------------------------------------------------------------------------- the launcher's environment, read in one place


def test_launcher_variables_are_read_through_runtime_launch():
    from distlearn.runtime import launch

    env = {"TORCHELASTIC_RESTART_COUNT": "2", "TORCHELASTIC_RUN_ID": "abc", "TORCHELASTIC_USE_AGENT_STORE": "True",
           "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "ACCELERATE_USE_CPU": "yes",
           "ACCELERATE_MIXED_PRECISION": " BF16 ", "ACCELERATE_USE_DEEPSPEED": "TRUE", "ACCELERATE_USE_FSDP": "1",
           "DISTLEARN_RUN_ID": " job-7 ", "DISTLEARN_EXIT_CODE_FILE": "/tmp/code",
           "DISTLEARN_LAUNCH_COMMAND": " launch/train.sh "}
    assert launch.restart_count(env) == 2 and launch.restart_count({"TORCHELASTIC_RESTART_COUNT": "x"}) == 0
    assert launch.under_torchelastic_agent(env) and launch.launched_by_torchelastic(env)
    assert launch.torchelastic_run_id(env) == "abc" and launch.torchelastic_run_id({}) == "none"
    assert launch.agent_store_shared(env) and launch.rendezvous_address(env) == ("10.0.0.1", 29500)
    assert launch.force_cpu(env) and launch.launched_by_accelerate(env)
    assert launch.launcher_mixed_precision(env) == "bf16" and launch.launcher_mixed_precision({}) == "no"
    assert launch.deepspeed_asked(env) and launch.fsdp_asked(env)
    assert launch.distlearn_run_id(env) == "job-7" and launch.distlearn_run_id({"DISTLEARN_RUN_ID": " "}) is None
    assert launch.exit_code_file(env) == "/tmp/code" and launch.launch_script_command(env) == "launch/train.sh"
    empty: dict[str, str] = {}
    assert not any(f(empty) for f in (launch.under_torchelastic_agent, launch.launched_by_torchelastic,
                                      launch.agent_store_shared, launch.force_cpu, launch.launched_by_accelerate,
                                      launch.deepspeed_asked, launch.fsdp_asked, launch.distlearn_run_id,
                                      launch.exit_code_file, launch.launch_script_command))


def test_no_module_but_launch_py_reads_the_environment_except_tracking_for_wandb():
    readers = [p.relative_to(REPO).as_posix() for p in (REPO / "distlearn").rglob("*.py")
               if "os.environ" in p.read_text().replace("``os.environ``", "") or "os.getenv" in p.read_text()]
    assert sorted(readers) == ["distlearn/command/tracking.py", "distlearn/runtime/launch.py"], readers
