"""Sharded FSDP2 checkpoints (distlearn.training.sharded): layout, shards per rank, kill, resume on 2 and 3.

One chain on real processes (tests/sharded_jobs.py; Accelerate's state forced into FSDP2 on the CPU,
the model sharded by torch's fully_shard over gloo): an uninterrupted run on 2 ranks with synchronous
saves; a run on 2 fresh ranks saving in the background (DCP's async_save) SIGKILLed while step 6's
write is in flight; its last committed checkpoint (step 3, mid-epoch) resumed on 2 ranks (bitwise
equal to the uninterrupted run: weights and optimizer) and on 3 (every sample once, weights to rounding).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import sharded_jobs as jobs
import torch

from distlearn.training.checkpoint import committed_marker, find, latest

STEPS = jobs.N_SAMPLES // jobs.GLOBAL_BATCH  # per epoch; a checkpoint every 3 steps and at each epoch's end
KEPT = 3  # the killed run's last committed checkpoint (mid-epoch); its step-6 write is in flight at the kill
FSDP_YAML = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "fsdp.yaml"


@pytest.fixture(scope="module")
def uninterrupted(dist_pool, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sharded") / "full"
    return folder, dist_pool.run(jobs.train_with, 2, str(folder), {"state_dict_type": "FULL_STATE_DICT"})


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A run on 2 ranks saving asynchronously, SIGKILLed while its step-6 write is in flight."""
    folder = tmp_path_factory.mktemp("sharded") / "killed"
    folder.mkdir()
    procs = jobs.start_killable(2, str(folder), {"asynchronous": True, "stuck_step": 6})
    try:
        for _ in range(1200):
            if (folder / "writing").exists() or not all(p.is_alive() for p, _ in procs):
                break
            time.sleep(0.1)
        time.sleep(0.5)  # the other rank reaches the stuck write too (its shards of the model are in flight)
        alive = all(p.is_alive() for p, _ in procs)
    finally:
        for proc, _ in procs:
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
    assert alive and (folder / "writing").exists(), [conn.recv() for p, conn in procs if conn.poll()]
    return folder


def _own_shards(checkpoint: Path, folder: str, world: int) -> list[tuple[int, int]]:
    """Per rank: its shard file's bytes, and the bytes of the rows FSDP2 gave it (torch.chunk along dim 0
    of every parameter; the optimizer holds two moments per parameter)."""
    moments = 1 if folder == "pytorch_model_fsdp_0" else 2
    own = [0] * world
    for param in jobs.make_model().parameters():
        for rank, chunk in enumerate(torch.chunk(param.detach(), world)):
            own[rank] += moments * chunk.numel() * chunk.element_size()
    return [((checkpoint / folder / f"__{rank}_0.distcp").stat().st_size, own[rank]) for rank in range(world)]


def _assert_own_shards_only(checkpoint: Path, world: int) -> None:
    """Each rank's files hold its own rows and DCP's headers (~1.6 KB an entry), far from the full state."""
    full = sum(p.numel() * p.element_size() for p in jobs.make_model().parameters())
    for folder, entries in (("pytorch_model_fsdp_0", 4), ("optimizer_0", 24)):
        for size, own in _own_shards(checkpoint, folder, world):
            assert own <= size <= own + entries * 1700, (folder, size, own)
            assert size < (0.5 if world == 3 else 0.6) * full * (1 if folder == "pytorch_model_fsdp_0" else 2)


def test_the_shipped_fsdp_config_saves_sharded_state_dicts():
    assert "fsdp_state_dict_type: SHARDED_STATE_DICT" in FSDP_YAML.read_text()
    assert "fsdp_version: 2" in FSDP_YAML.read_text()


def test_fsdp2_checkpoints_are_dcp_folders_of_the_modules_own_keys(uninterrupted):
    import torch.distributed.checkpoint as dcp

    folder, ranks = uninterrupted
    assert [p.name for p, _ in find(folder)] == [f"step-{s:08d}" for s in (16, 15, 12, 9, 8, 6, 3)]
    newest = folder / "checkpoints" / "step-00000016"
    names = jobs.torch_model_keys()
    model = dcp.FileSystemReader(str(newest / "pytorch_model_fsdp_0")).read_metadata().state_dict_metadata
    assert sorted(model) == sorted(f"model.{name}" for name in names)
    optimizer = dcp.FileSystemReader(str(newest / "optimizer_0")).read_metadata().state_dict_metadata
    assert {f"optimizer.state.{name}.{slot}" for name in names for slot in ("exp_avg", "exp_avg_sq", "step")} <= set(optimizer)
    assert not list(newest.glob("model.safetensors")) and not list(newest.glob("*.bin"))  # nothing gathered
    assert set(committed_marker(newest)["files"]) >= {"pytorch_model_fsdp_0/.metadata", "optimizer_0/__1_0.distcp"}
    # The config said FULL_STATE_DICT: the checkpoints are sharded anyway, and the setting is put back.
    assert [r["state_dict_type"] for r in ranks] == ["StateDictType.FULL_STATE_DICT"] * 2


def test_each_rank_writes_its_share_only(uninterrupted):
    _assert_own_shards_only(uninterrupted[0] / "checkpoints" / "step-00000016", 2)


def test_a_kill_during_a_background_write_leaves_the_previous_sharded_checkpoint(uninterrupted, killed, caplog):
    root = killed / "checkpoints"
    newest, meta = latest(killed)
    assert newest.name == f"step-{KEPT:08d}" and meta["world_size"] == 2 and meta["batches_done"] == KEPT  # mid-epoch
    half = root / ".tmp-step-00000006"
    assert (half / "pytorch_model_fsdp_0").is_dir() and not (half / "COMMITTED.json").exists()
    assert not list((half / "optimizer_0").glob("*.distcp"))  # the write the kill interrupted
    # What the background write committed is what a synchronous save writes.
    for kind in ("pytorch_model_fsdp_0", "optimizer_0"):
        for rank in range(2):
            written = (newest / kind / f"__{rank}_0.distcp").read_bytes()
            assert written == (uninterrupted[0] / "checkpoints" / newest.name / kind / f"__{rank}_0.distcp").read_bytes()
    # An incomplete sharded checkpoint under a final name is skipped like any other.
    incomplete = killed.parent / "incomplete"
    shutil.copytree(killed, incomplete)
    os.replace(incomplete / "checkpoints" / ".tmp-step-00000006", incomplete / "checkpoints" / "step-00000006")
    with caplog.at_level(logging.WARNING, logger="distlearn"):
        assert latest(incomplete)[0].name == newest.name
    assert "skipping checkpoint" in caplog.text and "step-00000006" in caplog.text


def _coverage(before: list[dict], after: list[dict], resumed_world: int) -> list[Counter]:
    """Per epoch, how often each sample was trained on: the uninterrupted run's first ``KEPT`` steps (what
    the killed run trained before its checkpoint), then the resumed run's steps."""
    epochs = [Counter(), Counter()]
    for rank in before:
        for batch in rank["seen"][:KEPT]:
            epochs[0].update(batch)
    for rank in after:
        assert len(rank["seen"]) == 2 * STEPS - KEPT, len(rank["seen"])
        for k, batch in enumerate(rank["seen"]):
            epochs[0 if k < STEPS - KEPT else 1].update(batch)
    return epochs


@pytest.mark.parametrize("world", [2, 3])
def test_resume_from_a_killed_run_on_2_and_3_ranks(dist_pool, uninterrupted, killed, tmp_path, world):
    folder = tmp_path / "run"
    shutil.copytree(killed, folder)
    resume = str(latest(folder)[0])
    ranks = dist_pool.run(jobs.train_with, world, str(folder), {"resume": resume})
    reference = uninterrupted[1]
    assert all(c == Counter(range(jobs.N_SAMPLES)) for c in _coverage(reference, ranks, world))
    for epoch, ref in reference[0]["epochs"].items():
        got = ranks[0]["epochs"][epoch]
        assert got["samples"] == ref["samples"] == jobs.N_SAMPLES and got["optimizer_steps"] == ref["optimizer_steps"]
        assert got["train_loss"] == (ref["train_loss"] if world == 2 else pytest.approx(ref["train_loss"], rel=1e-6))
    for name, weight in reference[0]["weights"].items():
        if world == 2:  # bitwise: weights and the optimizer's moments and steps
            assert torch.equal(ranks[0]["weights"][name], weight), name
        else:
            torch.testing.assert_close(ranks[0]["weights"][name], weight, rtol=0, atol=1e-5)
    if world == 2:
        for key, slots in reference[0]["optimizer"].items():
            for slot, value in slots.items():
                assert torch.equal(ranks[0]["optimizer"][key][slot], value), (key, slot)
    else:  # 3 ranks wrote the checkpoints from step 6 on: each its own rows
        assert latest(folder)[1]["world_size"] == 3
        _assert_own_shards_only(latest(folder)[0], 3)


def test_a_stop_signal_waits_for_the_sharded_write_in_flight(dist_pool, tmp_path):
    """SIGTERM on rank 0 while step 3's optimizer shards are still being written (a second longer): the
    stop's checkpoint comes after step 3's is committed, and nothing is left half-written."""
    ranks = dist_pool.run(jobs.train_with, 2, str(tmp_path), {"asynchronous": True, "stop_step": 3})
    stopped = ranks[0]["stopped"]
    assert stopped in ("step-00000004", "step-00000005") and all(r["stopped"] == stopped for r in ranks)
    assert ranks[0]["folders"] == ["step-00000003", stopped]  # no hidden folder left
    assert [p.name for p, _ in find(tmp_path)] == [stopped, "step-00000003"]


def test_a_full_state_checkpoint_of_an_fsdp2_run_still_resumes(dist_pool, uninterrupted, tmp_path):
    """Checkpoints written before they were sharded (``pytorch_model_fsdp.bin``, ``optimizer.bin``: the
    config's FULL_STATE_DICT) resume bitwise; the saves after the resume are sharded."""
    dist_pool.run(jobs.train_with, 2, str(tmp_path), {"every": 8, "state_dict_type": "FULL_STATE_DICT", "legacy": True})
    old = tmp_path / "checkpoints" / "step-00000008"  # the first epoch's end
    assert (old / "pytorch_model_fsdp.bin").is_file() and not (old / "pytorch_model_fsdp_0").exists()
    shutil.rmtree(tmp_path / "checkpoints" / "step-00000016")
    ranks = dist_pool.run(jobs.train_with, 2, str(tmp_path), {"resume": str(old)})  # the shipped SHARDED config
    for name, weight in uninterrupted[1][0]["weights"].items():
        assert torch.equal(ranks[0]["weights"][name], weight), name
    assert (latest(tmp_path)[0] / "pytorch_model_fsdp_0").is_dir()


def test_the_final_weights_and_the_last_sharded_checkpoint_read_back_as_the_full_model(uninterrupted):
    """The full weights gathered a tensor at a time from the FSDP2 model (HF shards above a 100 KB limit) and
    the last checkpoint's DCP folder read without a process group both hold the trained model, bitwise."""
    from safetensors.torch import load_file

    from distlearn.training.weight_files import open_weights

    folder, ranks = uninterrupted
    expected = ranks[0]["weights"]
    index = json.loads((folder / "final" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and not (folder / "final" / "model.safetensors").exists()
    final = {k: v for name in files for k, v in load_file(folder / "final" / name).items()}
    source = open_weights(folder / "checkpoints" / f"step-{2 * STEPS:08d}" / "pytorch_model_fsdp_0")
    saved = dict(source.tensors(list(expected)))
    for name, weight in expected.items():
        assert torch.equal(final[name], weight), name
        assert torch.equal(saved[name], weight), name
    assert set(final) == set(saved) == set(expected)
