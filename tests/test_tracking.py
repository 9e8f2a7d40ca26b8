"""W&B tracking: the mode rules (offline without credentials, a user's WANDB_MODE wins), and a real
offline run whose config and per-epoch metrics are read back from the .wandb file wandb wrote.

wandb 0.31 ships no Python reader for its run files (the writer is the Go wandb-core), so
`wandb_records` reads the format itself: a 7-byte header (":W&B", magic 0xBEE1, version 0), then
LevelDB-log-style 32 KiB blocks of chunks (crc32 4 bytes, length 2, type 1: full/first/middle/last)
holding serialized `wandb_internal_pb2.Record` messages.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import distlearn, run_env

from distlearn.command.tracking import (
    NoOpTracker,
    Tracker,
    accelerator_kwargs,
    epoch_metrics,
    make_tracker,
    resolve_mode,
    wandb_credentials,
)

TRACKED_EPOCHS = 2


def wandb_records(path: Path):
    """Every Record in a .wandb file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, version = data[:4], *struct.unpack("<HB", data[4:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"unknown .wandb header {data[:7]!r}"
    block, header = 32768, 7
    pos, chunks = 7, []
    while pos + header <= len(data):
        left = block - pos % block
        if left < header:  # a block's tail too short for a chunk header is zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + header])
        if kind == 0:  # preallocated, unwritten space
            pos += left
            continue
        chunks.append(data[pos + header : pos + header + length])
        pos += header + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def read_wandb_run(path: Path) -> dict:
    """The run's project, name, config, per-epoch history rows (epoch -> {key: value}) and running-loss
    rows (``steps``, in order) from its .wandb file."""
    out = {"config": {}, "history": {}, "steps": []}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["project"], out["name"] = record.run.project, record.run.display_name
            items = record.run.config.update
        elif kind == "config":
            items = record.config.update
        elif kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            if "epoch" in row:  # the epoch axis (W&B's _step only counts rows)
                out["history"][row["epoch"]] = row
            else:
                out["steps"].append(row)
            continue
        else:
            continue
        out["config"].update({item.key: json.loads(item.value_json) for item in items})
    return out


# --------------------------------------------------------------------------- a real offline run


def test_offline_run_holds_the_config_and_every_epoch(tmp_path):
    out = tmp_path / "run"
    env = run_env(WANDB_MODE="offline")
    env.pop("WANDB_DIR", None)  # the default: the W&B files go into the run's folder
    result = distlearn(
        f"learner_configs.learner_parameters.n_epochs={TRACKED_EPOCHS}",
        "run.tracking.project=distlearn-tests",
        "run.tracking.name=tiny-digits",
        f"run.output_dir={out}",
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    files = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    relative = files[0].parent.relative_to(out)
    assert f"W&B offline; upload with: wandb sync {relative} (from the output directory)" in result.stdout

    run = read_wandb_run(files[0])
    assert run["project"] == "distlearn-tests" and run["name"] == "tiny-digits"
    config = run["config"]
    assert config["data_configs"]["data_parameters"]["name"] == "digits"
    assert config["learner_configs"]["learner_parameters"]["n_epochs"] == TRACKED_EPOCHS
    assert config["run"]["output_dir"] == str(out)
    assert config["launch"]["num_processes"] == 1

    record = json.loads((out / "record.json").read_text())["training"]
    assert sorted(run["history"]) == list(range(TRACKED_EPOCHS))  # step = epoch
    for step, row in run["history"].items():
        epoch = record[str(step)]
        assert row["epoch"] == step
        assert row["train/loss"] == epoch["train_loss"] and row["train/accuracy"] == epoch["train_score"]
        assert row["test/loss"] == epoch["test_result"]["test_loss"]
        assert row["test/accuracy"] == epoch["test_result"]["test_score"]
        assert row["lr"] == epoch["lr"] and row["samples_per_second"] == pytest.approx(epoch["samples_per_second"])
    assert not list(files[0].parent.rglob("wandb-summary.json"))  # offline writes none


# --------------------------------------------------------------------------- the mode rules


def _netrc(tmp_path: Path, host: str) -> dict[str, str]:
    path = tmp_path / "netrc"
    path.write_text(f"machine {host}\n  login user\n  password {'k' * 40}\n")
    return {"NETRC": str(path), "HOME": str(tmp_path)}


def test_offline_without_credentials_online_with_them(tmp_path):
    tracking = {"backend": "wandb", "mode": None}
    bare = {"HOME": str(tmp_path)}  # no ~/.netrc there
    assert wandb_credentials(bare) is None
    assert resolve_mode(tracking, bare)[0] == "offline"
    assert resolve_mode(tracking, {**bare, "WANDB_API_KEY": "k" * 40}) == ("online", "W&B credentials from WANDB_API_KEY")
    assert resolve_mode(tracking, _netrc(tmp_path, "api.wandb.ai"))[0] == "online"
    assert resolve_mode(tracking, _netrc(tmp_path, "example.org"))[0] == "offline"  # a key for another host
    own_server = {**_netrc(tmp_path, "wandb.mycorp.net"), "WANDB_BASE_URL": "https://wandb.mycorp.net"}
    assert resolve_mode(tracking, own_server)[0] == "online"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    assert wandb_credentials(bare) == str(tmp_path / ".netrc")


def test_the_users_wandb_mode_wins_and_backend_none_turns_tracking_off():
    key = {"WANDB_API_KEY": "k" * 40}
    assert resolve_mode({"backend": "wandb", "mode": None}, {**key, "WANDB_MODE": "offline"})[0] == "offline"
    assert resolve_mode({"backend": "wandb", "mode": "online"}, {"WANDB_MODE": "disabled"})[0] == "disabled"
    assert resolve_mode({"backend": "wandb", "mode": "offline"}, key)[0] == "offline"  # the config over credentials
    assert resolve_mode({"backend": "none", "mode": "online"}, {**key, "WANDB_MODE": "online"})[0] == "disabled"
    assert accelerator_kwargs({"backend": "none"}, {}) == {}
    assert accelerator_kwargs({"backend": "wandb"}, {"WANDB_MODE": "offline"}) == {"log_with": "wandb"}
    assert accelerator_kwargs({"backend": "wandb"}, {"WANDB_MODE": "disabled"}) == {}


def test_the_main_process_gets_the_wandb_tracker_and_says_once_that_wandb_mode_wins(caplog):
    tracking = {"backend": "wandb", "mode": "online"}
    env = {"WANDB_MODE": "offline"}
    with caplog.at_level("WARNING", logger="distlearn.command.tracking"):
        assert accelerator_kwargs(tracking, env) == {"log_with": "wandb"}  # the same answer on every rank
        other = make_tracker(tracking, False, env)
        assert isinstance(other, NoOpTracker) and not caplog.records  # the other ranks stay quiet
        assert isinstance(make_tracker(tracking, True, env), Tracker)
    assert [r.getMessage() for r in caplog.records] == ["WANDB_MODE=offline in the environment wins over run.tracking.mode=online"]
    untracked = make_tracker({"backend": "none"}, True, {})
    assert isinstance(untracked, NoOpTracker) and untracked.describe() == "off (run.tracking.backend is none)"
    assert other.run_id is None and other.start(None, {}, "unused") is None  # every call accepted, nothing done


def test_epoch_metrics_names_and_drops_missing_values():
    import torch

    summary = {
        "train_loss": 0.5, "train_score": torch.tensor(0.9), "metric_name": "mse", "lr": 1e-3,
        "samples_per_second": float("nan"), "time_cost": 2.0, "test_result": None,
    }
    assert epoch_metrics(3, summary) == {
        "epoch": 3, "train/loss": 0.5, "train/mse": pytest.approx(0.9), "lr": 1e-3, "epoch_time": 2.0,
    }



# --------------------------------------------------------------------------- a resumed run


def test_a_resumed_run_keeps_its_wandb_id_and_logs_each_epoch_once(tmp_path):
    """Offline, W&B writes a second offline-run folder for the resumed part, under the same run id;
    `wandb sync` of both gives one run. Every epoch is logged exactly once across the two."""
    out = tmp_path / "run"
    env = run_env(WANDB_MODE="offline")
    env.pop("WANDB_DIR", None)
    common = ("run.tracking.project=distlearn-tests", f"run.output_dir={out}")
    first = distlearn("learner_configs.learner_parameters.n_epochs=2", *common, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    # the same command with more epochs: resumes from the last epoch's checkpoint and logs into the same run
    second = distlearn("learner_configs.learner_parameters.n_epochs=3", *common, cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.startswith("resuming from checkpoint") and "(the start of epoch 3, optimizer step" in second.stderr
    assert "changed since the checkpoint: learner_configs.learner_parameters.n_epochs 2 -> 3" in second.stderr
    files = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2
    ids = set()
    steps: list[int] = []
    for file in files:
        run_records = [r.run for r in wandb_records(file) if r.WhichOneof("record_type") == "run"]
        ids.add(run_records[0].run_id)
        steps += sorted(read_wandb_run(file)["history"])
    assert len(ids) == 1  # one W&B run, continued
    assert sorted(steps) == [0, 1, 2]  # each epoch once
    # the summary's upload hint names both folders, oldest first: one command uploads the whole run
    folders = " ".join(str(f.parent.relative_to(out)) for f in files)
    assert f"upload with: wandb sync {folders} (from the output directory)" in second.stdout, second.stdout
    dry = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run", *folders.split()], cwd=out, env=env,
                         capture_output=True, text=True, timeout=120)
    assert "Would sync 2 run(s)" in dry.stdout + dry.stderr, dry.stdout + dry.stderr  # wandb takes them in one command


# --------------------------------------------------------------------------- every rank, one W&B run


def _track_on_every_rank(rank: int, world: int, root: str) -> dict:
    """What the command does with tracking, on one rank of a real gloo group: an Accelerator built
    with the run's log_with, the tracker this rank gets, start / two epochs / finish. Another rank
    than the main one must not touch wandb: `import wandb` is made to fail there."""
    import os
    import sys

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from distlearn.command.tracking import accelerator_kwargs, make_tracker

    out = Path(root) / f"rank{rank}"
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(out / "wandb-dir"), "WANDB_SILENT": "true"}
    saved_env = {k: os.environ.get(k) for k in env}
    saved_wandb = {name: module for name, module in sys.modules.items() if name == "wandb" or name.startswith("wandb.")}
    os.environ.update(env)  # wandb reads its own settings from the environment too
    if rank != 0:
        for name in saved_wandb:
            del sys.modules[name]
        sys.modules["wandb"] = None  # any `import wandb` here raises ImportError
    tracking = {"backend": "wandb", "project": "distlearn-tests", "name": "ranks", "mode": None}
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        accelerator = Accelerator(cpu=True, **accelerator_kwargs(tracking, env))
        tracker = make_tracker(tracking, accelerator.is_main_process, env)
        tracker.start(accelerator, {"run": {"seed": 0}}, out)
        for epoch in range(2):
            tracker.log_epoch(epoch, {"train_loss": 1.0 / (epoch + 1), "lr": 0.1, "test_result": None})
        tracker.finish()
        accelerator.wait_for_everyone()
        return {
            "kind": type(tracker).__name__,
            "run_id": tracker.run_id,
            "files": sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else [],
            "wandb_imported": sys.modules.get("wandb") is not None,
            "trackers": len(accelerator.trackers),
        }
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        if rank != 0:
            del sys.modules["wandb"]
            sys.modules.update(saved_wandb)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_only_the_main_process_touches_wandb(dist_pool, tmp_path):
    """Two real ranks make the same tracker calls: rank 0 writes one offline W&B run holding both
    epochs; rank 1 holds a no-op tracker, imports no wandb and writes no file."""
    main, other = dist_pool.run(_track_on_every_rank, 2, str(tmp_path))
    assert main["kind"] == "Tracker" and main["run_id"] and main["wandb_imported"]
    (run_file,) = (tmp_path / "rank0" / "wandb-dir").glob("wandb/offline-run-*/run-*.wandb")
    assert sorted(read_wandb_run(run_file)["history"]) == [0, 1]
    assert other == {"kind": "NoOpTracker", "run_id": None, "files": [], "wandb_imported": False, "trackers": 0}
    assert not (tmp_path / "rank1").exists()


def _exit_codes(run_file: Path) -> list[int]:
    return [r.exit.exit_code for r in wandb_records(run_file) if r.WhichOneof("record_type") == "exit"]


@pytest.mark.parametrize("exit_code", [0, 1])
def test_a_run_ending_on_an_error_is_marked_failed_in_wandb(fresh_accelerate, tmp_path, monkeypatch, exit_code):
    """The command's error path finishes the W&B run with exit code 1 (Accelerate's finish() says 0)."""
    from accelerate import Accelerator

    from distlearn.command.tracking import accelerator_kwargs, make_tracker

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    tracking = {"backend": "wandb", "mode": "offline"}
    tracker = make_tracker(tracking, True)
    tracker.start(Accelerator(cpu=True, **accelerator_kwargs(tracking)), {"a": 1}, tmp_path / "run")
    tracker.finish(exit_code=exit_code)
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    assert _exit_codes(run_file) == [exit_code]


def test_a_failed_wandb_start_leaves_nothing_to_finish(fresh_accelerate, tmp_path, monkeypatch, caplog):
    """wandb.init refusing (here an id W&B does not accept) raises once; finishing after it adds no warning."""
    from accelerate import Accelerator

    from distlearn.command.tracking import accelerator_kwargs, make_tracker

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    tracking = {"backend": "wandb", "mode": "offline"}
    accelerator = Accelerator(cpu=True, **accelerator_kwargs(tracking))
    tracker = make_tracker(tracking, True)
    with pytest.raises(Exception, match="Run ID"):
        tracker.start(accelerator, {"a": 1}, tmp_path / "run", resume_id="bad/id")
    with caplog.at_level("WARNING", logger="distlearn"):
        tracker.finish(exit_code=1)
    assert not caplog.records and accelerator.trackers == []
