"""Several nodes, long jobs (issue 19): one shared run folder checked at start, time-based
checkpoints agreed by every rank, and a save skipped (the previous checkpoint kept) when the disk
cannot hold it.

The shared-folder probe runs on two real gloo ranks (the session pool) and in a real two-rank
`distlearn train` whose ranks start in different working directories with a relative
`run.output_dir` (what nodes without a shared file system look like on one machine).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import warm
from launching import launch_env

ROOT = Path(__file__).resolve().parents[1]
TINY = ["learner_configs.learner_parameters.n_epochs=1", "run.tracking.backend=none"]


def _fresh_accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return Accelerator(cpu=True)


def _reset_accelerator() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _probe(rank: int, world: int, folders: list[str]) -> dict:
    """Each rank gives its own folder (as its working directory would) to the probe."""
    from distlearn.command import shared_fs

    accelerator = _fresh_accelerator()
    here = os.getcwd()
    try:
        main = Path(folders[0])
        os.chdir(Path(folders[rank]).parent)  # the relative folder "run" resolves against this rank's directory
        try:
            mine = shared_fs.shared_folder(accelerator, "run", main)
            out = {"folder": str(mine), "error": None}
        except shared_fs.SharedFolderError as exc:
            out = {"folder": None, "error": str(exc), "exit": exc.exit_code}
        accelerator.wait_for_everyone()
        out["left"] = sorted(p.name for p in (main / "checkpoints").iterdir()) if rank == 0 else None
        return out
    finally:
        os.chdir(here)  # a pool rank serves later tests
        _reset_accelerator()


def test_the_probe_passes_on_one_folder_and_leaves_nothing(dist_pool, tmp_path):
    (tmp_path / "run").mkdir()
    main, other = dist_pool.run(_probe, 2, [str(tmp_path / "run")] * 2)
    assert main["error"] is None and other["error"] is None
    assert main["folder"] == other["folder"] == str((tmp_path / "run").resolve())
    assert main["left"] == []  # the probe is removed


def test_the_probe_refuses_on_every_rank_naming_hosts_and_folders(dist_pool, tmp_path):
    (tmp_path / "a" / "run").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    folders = [str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run")]
    main, other = dist_pool.run(_probe, 2, folders)
    assert main["error"] == other["error"] and main["exit"] == other["exit"] == 2
    host = socket.gethostname()
    assert f"rank 1 on host {host} (folder {tmp_path / 'b' / 'run'})" in main["error"]
    assert f"rank 0 on host {host} wrote a probe file into {tmp_path / 'a' / 'run'}/checkpoints" in main["error"]
    assert "run.output_dir" in main["error"]
    assert main["left"] == [] and not (tmp_path / "b" / "run").exists()  # nothing left, nothing created elsewhere


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ranks_in_different_directories_are_refused_before_training(tmp_path):
    """Two ranks started by hand (torchrun's variables) in two working directories, `run.output_dir=run`."""
    port = str(_free_port())
    procs = []
    for rank in range(2):
        cwd = tmp_path / f"node{rank}"
        cwd.mkdir()
        env = launch_env(RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE="2", LOCAL_WORLD_SIZE="1",
                         MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(warm.Popen([sys.executable, "-m", "distlearn", "train", *TINY, "run.output_dir=run", "-q"],
                                cwd=cwd, env=env))  # forked warm (tests/warm.py)
    outs = [proc.communicate(timeout=200) for proc in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 2, err[-3000:]
    err = outs[0][1]
    assert "do not share one run folder" in err and str(tmp_path / "node1" / "run") in err, err[-3000:]
    assert socket.gethostname() in err and "Traceback" not in err
    assert not (tmp_path / "node0" / "run").exists()  # the failed start leaves no folder and trained nothing
    assert not (tmp_path / "node1" / "run").exists()


# --------------------------------------------------------------------------- timed checkpoints

NOW, NEVER = 1e-9, 1e9  # minutes: due at every display step, and never


def _timed(rank: int, world: int, folder: str, minutes: list[float], every_n_steps: int | None) -> list[int]:
    """One epoch of 8 optimizer steps (display every 3) with this rank's every_n_minutes; the saved steps."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from distlearn import BackwardLearner
    from distlearn.training.checkpoint import Checkpoints, find

    _reset_accelerator()
    try:
        x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
        loader = DataLoader(TensorDataset(x, (x.sum(1) > 0).long()), batch_size=32 // (8 * world))
        torch.manual_seed(0)
        learner = BackwardLearner(n_epochs=1, loss=nn.CrossEntropyLoss(), display_every_n_steps=3, optimizer_configs={
            "optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lr": 0.1}})
        checkpoints = Checkpoints(folder, every_n_steps=every_n_steps, keep_last=100, every_n_minutes=minutes[rank])
        learner.train(nn.Linear(4, 2), loader, checkpoints=checkpoints, disable_tqdm=True)
        return sorted(int(meta["step"]) for _, meta in find(folder))
    finally:
        _reset_accelerator()


@pytest.mark.parametrize("minutes, every_n_steps, expected", [
    ([NOW, NEVER], None, [3, 6, 8]),  # rank 0's clock says due: every rank saves at the display steps
    ([NEVER, NOW], None, [8]),  # another rank's clock has no say: epoch end only
    ([NOW, NEVER], 4, [3, 4, 6, 8]),  # combined with every_n_steps
])
def test_timed_checkpoints_follow_the_main_process_clock_on_every_rank(dist_pool, tmp_path, minutes, every_n_steps,
                                                                         expected):
    assert dist_pool.run(_timed, 2, str(tmp_path / "two"), minutes, every_n_steps) == [expected, expected]
    if minutes[0] == NOW and every_n_steps is None:  # as on 1 process
        assert dist_pool.run(_timed, 1, str(tmp_path / "one"), minutes, every_n_steps) == [expected]


def test_every_n_minutes_is_checked():
    from distlearn.training.checkpoint import Checkpoints

    for bad in (0, -1, "5", True):
        with pytest.raises(ValueError, match=f"every_n_minutes must be a number > 0 or None, got {bad!r}"):
            Checkpoints("unused", every_n_minutes=bad)


def test_the_config_checks_every_n_minutes_up_front():
    from distlearn.experiment.config import ConfigError, load_config, validate_config

    with pytest.raises(ConfigError, match=r"run.checkpoint.every_n_minutes: expected null \(no timed checkpoints\) "
                                          r"or a number of minutes > 0, got 0"):
        validate_config(load_config(None, ["run.checkpoint.every_n_minutes=0"]), check_output_dir=False)
    with pytest.raises(ConfigError, match="display_every_n_steps is 0"):
        validate_config(load_config(None, ["run.checkpoint.every_n_minutes=30",
                                           "learner_configs.learner_parameters.display_every_n_steps=0"]),
                        check_output_dir=False)
    validate_config(load_config(None, ["run.checkpoint.every_n_minutes=0.5"]), check_output_dir=False)


# --------------------------------------------------------------------------- free space before a save

# Each rank of a two-epoch run saves at the epoch ends; after the first save the main process fills
# the small file system up to half of that checkpoint's size, so the second save cannot fit.
_FILL_UP = '''
import logging, os, shutil, sys
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from distlearn import BackwardLearner
from distlearn.training.checkpoint import Checkpoints, find
from distlearn.training.free_space import checkpoint_bytes

logging.basicConfig(level=logging.WARNING)
folder = sys.argv[1]
world = int(os.environ.get("WORLD_SIZE", "1"))

def fill(epoch, record):
    if epoch == 0 and int(os.environ.get("RANK", "0")) == 0:
        size = checkpoint_bytes(find(folder)[0][1])
        ballast = shutil.disk_usage(folder).free - size // 2
        with open(os.path.join(folder, "ballast"), "wb") as f:
            f.write(bytes(ballast))

x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
loader = DataLoader(TensorDataset(x, (x.sum(1) > 0).long()), batch_size=32 // (4 * world))
torch.manual_seed(0)
learner = BackwardLearner(n_epochs=2, loss=nn.CrossEntropyLoss(), optimizer_configs={
    "optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lr": 0.1}})
record = learner.train(nn.Sequential(nn.Linear(4, 1024), nn.Linear(1024, 2)), loader, disable_tqdm=True,
                       checkpoints=Checkpoints(folder), on_epoch_end=fill)
print("EPOCHS", sorted(record["training"]), "SAVED", [path.name for path, _ in find(folder)])
'''


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(not _unshare_works(), reason="needs user namespaces (unshare -rm) to mount a small tmpfs")
@pytest.mark.parametrize("world", [2])
def test_a_save_that_does_not_fit_is_skipped_and_the_previous_checkpoint_kept(tmp_path, world):
    """On a real 2 MB tmpfs (mounted in a user namespace, no root): the second save is skipped with one warning."""
    small, script = tmp_path / "small", tmp_path / "fill_up.py"
    small.mkdir()
    script.write_text(_FILL_UP)
    port = str(_free_port())
    ranks = " & ".join(
        f"RANK={rank} LOCAL_RANK={rank} WORLD_SIZE={world} LOCAL_WORLD_SIZE={world} MASTER_ADDR=127.0.0.1 "
        f"MASTER_PORT={port} {sys.executable} {script} {small} > {tmp_path}/rank{rank}.log 2>&1"
        for rank in range(world))
    shell = f"mount -t tmpfs -o size=2m none {small} && {{ {ranks} & wait; }}; ls -a {small}/checkpoints"
    done = subprocess.run(["unshare", "-rm", "sh", "-c", shell], env=launch_env(), capture_output=True, text=True,
                          timeout=200)
    logs = [(tmp_path / f"rank{rank}.log").read_text() for rank in range(world)]
    assert done.returncode == 0, logs
    for log in logs:
        assert "EPOCHS [0, 1] SAVED ['step-00000004']" in log, log  # trained on; the epoch-0 checkpoint stays
    assert done.stdout.split() == [".", "..", "step-00000004"]  # nothing half-written left
    warning = [line for line in logs[0].splitlines() if "not saving checkpoint step-00000008" in line]
    assert len(warning) == 1 and f"{small}/checkpoints has " in warning[0] and "bytes free" in warning[0]
    assert all("not saving" not in log for log in logs[1:])  # said once, by the main process


# --------------------------------------------------------------------------- asynchronous saves


def _train_saving(rank: int, world: int, folder: str, asynchronous: bool, display: int = 50,
                  signal_in_write: bool = False) -> dict:
    """One epoch of 8 steps saving every 2 (in the background or not); the committed checkpoints' contents.

    ``signal_in_write``: rank 0's first background write sends SIGTERM to its own process, and writes a
    second later (the stop comes while it is still in flight).
    """
    import signal as signals
    import time

    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from distlearn import BackwardLearner
    from distlearn.training import async_save
    from distlearn.training.checkpoint import Checkpoints, Interrupted, find

    original = async_save._write

    def signalled_write(*args):
        if rank == 0 and not (Path(folder) / "signalled").exists():
            (Path(folder) / "signalled").touch()
            os.kill(os.getpid(), signals.SIGTERM)
            time.sleep(1.0)  # the loop goes on, hears of the stop, and must wait for this write
        return original(*args)

    _reset_accelerator()
    async_save._write = signalled_write if signal_in_write else original
    try:
        x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
        loader = DataLoader(TensorDataset(x, (x.sum(1) > 0).long()), batch_size=32 // (8 * world), shuffle=True)
        torch.manual_seed(0)
        learner = BackwardLearner(n_epochs=1, loss=nn.CrossEntropyLoss(), display_every_n_steps=display,
                                  optimizer_configs={"optimizer_class": "torch.optim.AdamW",
                                                     "optimizer_parameters": {"lr": 0.1}})
        checkpoints = Checkpoints(folder, every_n_steps=2, keep_last=100, asynchronous=asynchronous)
        stopped = None
        with checkpoints.catch_signals():
            try:
                learner.train(nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2)), loader,
                              checkpoints=checkpoints, disable_tqdm=True)
            except Interrupted as exc:
                stopped = exc.checkpoint.name
        return {"stopped": stopped, "leftovers": sorted(p.name for p in Path(folder, "checkpoints").glob(".*")),
                "saved": {path.name: _contents(path, rank) for path, _ in find(folder)}}
    finally:
        async_save._write = original
        _reset_accelerator()


def _contents(path: Path, rank: int) -> dict:
    """What a checkpoint holds for this rank, clocks left out: the files' bytes or loaded values, as comparable text."""
    import torch

    out = {"model": (path / "model.safetensors").read_bytes()}
    for name in ("optimizer.bin", f"random_states_{rank}.pkl"):
        out[name] = repr(torch.load(path / name, weights_only=False))
    learner = torch.load(path / f"learner_state_{rank}.pt", weights_only=False)
    out["learner"] = repr({k: learner[k] for k in ("epoch", "step", "batches_done", "rng")})
    return out


@pytest.mark.parametrize("world", [2])
def test_background_saves_write_what_synchronous_saves_write(dist_pool, tmp_path, world):
    sync = dist_pool.run(_train_saving, world, str(tmp_path / "sync"), False)
    background = dist_pool.run(_train_saving, world, str(tmp_path / "async"), True, 3)  # commits at display steps
    for plain, written in zip(sync, background):
        assert sorted(written["saved"]) == ["step-00000002", "step-00000004", "step-00000006", "step-00000008"]
        assert written["saved"] == plain["saved"]  # model, optimizer, RNG and progress as of each save's step
        assert written["leftovers"] == []


@pytest.mark.parametrize("world", [1, 2])
def test_a_stop_signal_waits_for_the_write_in_flight(dist_pool, tmp_path, world):
    """SIGTERM arrives while step 2's checkpoint is being written: it is committed, then the stop's own
    (at step 3 or 4: the signal is handled between two of the main thread's Python instructions)."""
    out = dist_pool.run(_train_saving, world, str(tmp_path / "run"), True, 1, True)
    assert out[0]["stopped"] in ("step-00000003", "step-00000004")
    for rank in out:
        assert rank["stopped"] == out[0]["stopped"]
        assert sorted(rank["saved"]) == ["step-00000002", rank["stopped"]] and rank["leftovers"] == []


_KILLED_IN_WRITE = '''
import sys, threading
from pathlib import Path
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from distlearn import BackwardLearner
from distlearn.training import async_save
from distlearn.training.checkpoint import Checkpoints

folder = Path(sys.argv[1])
original = async_save._write

def stuck_write(tmp, *args):  # step 4's write gets halfway (Accelerate's files, no progress file) and hangs
    if tmp.name != ".tmp-step-00000004":
        return original(tmp, *args)
    from accelerate.checkpointing import save_accelerator_state
    save_accelerator_state(str(tmp), *args[:8])
    (folder / "writing").touch()
    threading.Event().wait()

async_save._write = stuck_write
x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
loader = DataLoader(TensorDataset(x, (x.sum(1) > 0).long()), batch_size=4)
learner = BackwardLearner(n_epochs=1, loss=nn.CrossEntropyLoss(), optimizer_configs={
    "optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lr": 0.1}})
learner.train(nn.Linear(4, 2), loader, checkpoints=Checkpoints(folder, every_n_steps=2, asynchronous=True),
              disable_tqdm=True)
'''


def test_a_kill_during_a_background_write_leaves_the_previous_checkpoint(tmp_path):
    import signal
    import time

    from distlearn.training.checkpoint import committed_marker, latest

    script, run = tmp_path / "killed.py", tmp_path / "run"
    script.write_text(_KILLED_IN_WRITE)
    proc = warm.Popen([sys.executable, str(script), str(run)], env=launch_env())  # forked warm (tests/warm.py)
    try:
        for _ in range(1200):  # the write in flight is halfway
            if (run / "writing").exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert (run / "writing").exists(), proc.communicate()[1] if proc.poll() is not None else "no write started"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    newest, meta = latest(run)
    assert newest.name == "step-00000002" and committed_marker(newest)["step"] == 2  # complete, loadable
    assert (run / "checkpoints" / ".tmp-step-00000004" / "model.safetensors").exists()  # the half-written one ...
    assert not (run / "checkpoints" / ".tmp-step-00000004" / "COMMITTED.json").exists()  # ... never committed


def _commit_fails(rank: int, world: int, folder: str, asynchronous: bool) -> dict:
    """Training saving every 2 steps whose commit of step 4 fails on the main process (a full disk, as
    ``os.replace`` or the marker's write would report it): what each rank raised, and what is left."""
    import errno
    import time

    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from distlearn import BackwardLearner
    from distlearn.training.checkpoint import CheckpointError, Checkpoints, find

    original = Checkpoints._commit

    def commit(self, tmp, final, *args):
        if final.name == "step-00000004":
            raise OSError(errno.ENOSPC, "No space left on device", str(final))
        return original(self, tmp, final, *args)

    _reset_accelerator()
    Checkpoints._commit = commit if rank == 0 else original
    try:
        x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
        loader = DataLoader(TensorDataset(x, (x.sum(1) > 0).long()), batch_size=32 // (8 * world))
        learner = BackwardLearner(n_epochs=1, loss=nn.CrossEntropyLoss(), display_every_n_steps=50,
                                  optimizer_configs={"optimizer_class": "torch.optim.AdamW"})
        checkpoints = Checkpoints(folder, every_n_steps=2, keep_last=100, asynchronous=asynchronous)
        began, raised = time.monotonic(), None
        try:
            learner.train(nn.Linear(4, 2), loader, checkpoints=checkpoints, disable_tqdm=True)
        except CheckpointError as exc:
            raised = str(exc)
        return {"raised": raised, "seconds": time.monotonic() - began, "complete": [p.name for p, _ in find(folder)]}
    finally:
        Checkpoints._commit = original
        _reset_accelerator()


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_commit_failing_on_the_main_process_fails_every_rank_with_its_cause(dist_pool, tmp_path, asynchronous):
    """Before, the other ranks waited at the barrier after the commit until the group's timeout and then
    reported a peer that did not arrive; now every rank raises the main process's error at once."""
    out = dist_pool.run(_commit_fails, 2, str(tmp_path / "run"), asynchronous)
    for rank in out:
        assert rank["raised"] and "committing checkpoint step-00000004 failed on the main process" in rank["raised"]
        assert "No space left on device" in rank["raised"]
        assert rank["seconds"] < 15  # not the pool group's 20 s timeout
    assert out[0]["complete"][-1] == "step-00000002"  # the previous checkpoint is kept
