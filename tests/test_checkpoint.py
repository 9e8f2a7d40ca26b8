"""The resume guarantee: a run SIGKILLed anywhere and started again ends bitwise where it would have.

Each run is tests/scripts/resume_run.py in a real process (1 process: python; 2: torchrun with
gloo on CPU). A killed run is started again with the same command and the same folder until it
finishes; its final weights must be bitwise those of the uninterrupted run, and its record the
same in every number but the clock readings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from distlearn import checkpoint

SCRIPT = Path(__file__).parent / "scripts" / "resume_run.py"
ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", PYTHONPATH=str(ROOT))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "RANK_ONLY"):
        env.pop(key, None)
    env.update(extra)
    return env


def _run(procs: int, run_dir: Path, result: Path, kill: str | None = None, **env: str) -> subprocess.CompletedProcess:
    if procs == 1:
        cmd = [sys.executable, str(SCRIPT)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--standalone",
               "--monitor_interval", "0.2", str(SCRIPT)]
    cmd += [str(run_dir), str(result)] + ([kill] if kill else [])
    return subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=240)


def _without_clocks(record: dict) -> dict:
    """The record with every clock reading (times, durations, speeds) left out."""
    if isinstance(record, dict):
        return {k: _without_clocks(v) for k, v in record.items()
                if "time" not in k and k not in ("samples_per_second", "preparation")}
    return record


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference runs, 1 and 2 processes, never killed."""
    out = {}
    for procs in (1, 2):
        base = tmp_path_factory.mktemp(f"full{procs}")
        done = _run(procs, base / "run", base / "result.json")
        assert done.returncode == 0, done.stderr[-3000:]
        out[procs] = json.loads((base / "result.json").read_text())
    return out


def _resume_until_done(procs, run_dir, result, kills):
    """Kill the run at each of ``kills`` in turn, restarting it with the same command, then let it finish.

    A kill is ``"where"`` (every rank) or ``("where", rank)`` (that rank only).
    """
    resumed = []
    for kill in kills:
        kill, env = (kill, {}) if isinstance(kill, str) else (kill[0], {"RANK_ONLY": str(kill[1])})
        killed = _run(procs, run_dir, result, kill, **env)
        assert killed.returncode != 0, f"{kill}: the run was not killed\n{killed.stderr[-2000:]}"
        assert "SIGKILL at" in killed.stderr, killed.stderr[-3000:]
        assert not result.exists()
        resumed.append(checkpoint.latest(run_dir)[0].name if checkpoint.latest(run_dir) else None)
    done = _run(procs, run_dir, result)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(result.read_text()), resumed, done


def _assert_same(got: dict, want: dict) -> None:
    assert got["weights_hex"] == want["weights_hex"], "final weights differ from the uninterrupted run's"
    assert _without_clocks(got["record"]) == _without_clocks(want["record"])
    assert list(got["record"]["training"]) == ["0", "1", "2"]


def test_one_process_killed_mid_epoch_at_epoch_end_and_during_saves_ends_bitwise_equal(uninterrupted, tmp_path):
    # Saves happen at steps 4, 8, 9 (epoch 0 ends), 12, 16, 18 (epoch 1), 20, 24, 27.
    kills = ["step:6", "epoch:0", "save:16", "rename:20", "step:26"]
    got, latest, _ = _resume_until_done(1, tmp_path / "run", tmp_path / "result.json", kills)
    assert latest == ["step-00000004", "step-00000009", "step-00000012", "step-00000018", "step-00000024"]
    _assert_same(got, uninterrupted[1])
    assert got["resumed_from"] == "step-00000024"


def test_two_processes_killed_anywhere_end_bitwise_equal(uninterrupted, tmp_path):
    # ("step:22", 1): rank 1 only; the launcher stops rank 0, which waits in the next collective
    kills = ["step:5", "save:16", ("step:22", 1)]
    got, latest, _ = _resume_until_done(2, tmp_path / "run", tmp_path / "result.json", kills)
    assert latest == ["step-00000004", "step-00000012", "step-00000020"]
    _assert_same(got, uninterrupted[2])
    assert got["resumed_from"] == "step-00000020"


def test_a_corrupt_newest_checkpoint_is_skipped_with_a_warning_and_the_result_is_the_same(uninterrupted, tmp_path):
    run_dir, result = tmp_path / "run", tmp_path / "result.json"
    _run(1, run_dir, result, "step:14")
    newest = run_dir / "checkpoints" / "step-00000012"
    with open(newest / "model.safetensors", "r+b") as f:  # truncated, as by a disk that filled up
        f.truncate(100)
    done = _run(1, run_dir, result)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipping checkpoint" in done.stderr and "step-00000012" in done.stderr and "model.safetensors" in done.stderr
    got = json.loads(result.read_text())
    assert got["resumed_from"] == "step-00000009"
    _assert_same(got, uninterrupted[1])


def test_find_skips_incomplete_folders_and_keeps_the_newest_complete(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    for step, marker in ((3, True), (7, True), (9, False), (11, "garbage")):
        folder = root / f"step-{step:08d}"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"x" * 10)
        if marker is True:
            (folder / checkpoint.MARKER).write_text(json.dumps({"step": step, "files": {"model.safetensors": 10}}))
        elif marker:
            (folder / checkpoint.MARKER).write_text("{not json")
    (root / ".tmp-step-00000013").mkdir()
    with caplog.at_level("WARNING"):
        found = checkpoint.find(tmp_path)
    assert [p.name for p, _ in found] == ["step-00000007", "step-00000003"]
    text = caplog.text
    assert "step-00000009: no commit marker" in text and "step-00000011: unreadable commit marker" in text
    assert checkpoint.latest(tmp_path / "nothing") is None


def test_sigkill_really_kills(tmp_path):
    """The harness itself: a kill is a SIGKILL (exit -9), not an exception the script could catch."""
    killed = _run(1, tmp_path / "run", tmp_path / "r.json", "step:2")
    assert killed.returncode == -signal.SIGKILL
