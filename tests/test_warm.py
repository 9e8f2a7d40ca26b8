"""tests/warm.py: a warm launch ends as the same command started cold would (the suite relies on it)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import warm
from launching import launch_env

SCRIPT = """
import atexit, os, signal, sys
print("argv", sys.argv[1:], "cwd", os.getcwd(), "knob", os.environ.get("WARM_KNOB"), "first", sys.path[0] == os.path.dirname(os.path.abspath(__file__)))
print("to stderr", file=sys.stderr)
atexit.register(lambda: print("atexit ran", flush=True))
how = sys.argv[1]
sys.stdout.flush()
if how == "exit":
    sys.exit(3)
if how == "raise":
    raise ValueError("boom")
if how == "os_exit":
    os._exit(4)
if how == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if how == "term":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.kill(os.getpid(), signal.SIGTERM)
"""


@pytest.mark.parametrize("how", ["end", "exit", "raise", "os_exit", "kill", "term"])
def test_a_warm_script_ends_as_a_cold_one(tmp_path, how):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    command = [sys.executable, str(script), how]
    env = launch_env(WARM_KNOB="set")
    cold = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    hot = warm.run(command, cwd=tmp_path, env=env, timeout=60)
    assert hot.returncode == cold.returncode == {"end": 0, "exit": 3, "raise": 1, "os_exit": 4, "kill": -signal.SIGKILL,
                                                 "term": 143}[how], (cold, hot)
    assert hot.stdout == cold.stdout, (cold.stdout, hot.stdout)  # argv, folder, environment, sys.path, atexit
    assert f"argv ['{how}'] cwd {tmp_path} knob set first True" in hot.stdout
    assert ("atexit ran" in hot.stdout) == (how in ("end", "exit", "raise", "term"))
    assert "to stderr" in hot.stderr and ("ValueError: boom" in hot.stderr) == (how == "raise")


def test_a_warm_module_gets_its_own_session_and_reports_a_timeout(tmp_path):
    import os

    proc = warm.Popen([sys.executable, "-m", "http.server", "--help"], cwd=tmp_path, env=launch_env())
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "usage" in out
    sleeper = tmp_path / "sleep.py"
    sleeper.write_text("import os, time\nprint(os.getsid(0) == os.getpid(), flush=True)\ntime.sleep(60)\n")
    with pytest.raises(subprocess.TimeoutExpired):
        warm.run([sys.executable, str(sleeper)], cwd=tmp_path, env=launch_env(), timeout=1)
    started = warm.Popen([sys.executable, str(sleeper)], cwd=tmp_path, env=launch_env())
    started.send_signal(signal.SIGTERM)
    assert started.wait(timeout=60) == -signal.SIGTERM and os.getsid(0) != started.pid
    assert not warm.one_process([sys.executable, "-m", "torch.distributed.run", "x.py"])
    assert warm.one_process([sys.executable, "-m", "distlearn", "train"]) and warm.one_process([sys.executable, "x.py"])


RANKS_SCRIPT = """
import os, signal, sys, time
import torch, torch.distributed as dist
rank, how = int(os.environ["RANK"]), sys.argv[1]
for i in range(300):
    print(f"rank {rank} of {os.environ['WORLD_SIZE']} local {os.environ['LOCAL_RANK']} line {i}")
dist.init_process_group("gloo")  # env://: MASTER_ADDR/PORT, RANK, WORLD_SIZE as the launch set them
total = torch.tensor([rank + 1.0])
dist.all_reduce(total)
print("sum", total.item(), flush=True)
if how == "fail":
    if rank == 1:
        sys.exit(3)
    signal.signal(signal.SIGTERM, lambda *_: (print(f"SIGTERM stopped rank {rank}", flush=True), os._exit(143)))
    time.sleep(60)
"""


@pytest.mark.parametrize("how", ["end", "fail"])
def test_warm_ranks_meet_in_one_group_and_a_failed_rank_stops_the_others_as_torchrun_does(tmp_path, how):
    """Ranks: each gets its own RANK/LOCAL_RANK with the same WORLD_SIZE and MASTER_PORT, their lines stay
    whole in the shared stdout, and when one fails the others get SIGTERM (not 60 s of waiting); exit 1."""
    import time

    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT)
    began = time.monotonic()
    proc = warm.Ranks(3, [sys.executable, str(script), how], cwd=tmp_path, env=launch_env())
    out, err = proc.communicate(timeout=60)
    lines = out.splitlines()
    for rank in range(3):
        assert [ln for ln in lines if ln.startswith(f"rank {rank} ")] == [
            f"rank {rank} of 3 local {rank} line {i}" for i in range(300)], err
    assert lines.count("sum 6.0") == 3, err
    if how == "end":
        assert proc.returncode == 0 and proc.codes == [0, 0, 0], err
    else:
        assert proc.returncode == 1 and proc.codes == [143, 3, 143], err
        assert sorted(ln for ln in lines if ln.startswith("SIGTERM")) == ["SIGTERM stopped rank 0", "SIGTERM stopped rank 2"]
        assert time.monotonic() - began < 30
