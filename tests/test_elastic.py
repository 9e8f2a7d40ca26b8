"""Elastic resume: a checkpoint written by P processes continues on Q, and restarts under torchrun.

The end-to-end runs are tests/scripts/elastic_run.py in real processes (forked warm from the
session's fork server, several as one hand launch with gloo on CPU: tests/warm.py), SIGKILLed
mid-epoch and started again on another number of processes; the restarts under torchrun go
through launch/torchrun.sh. Every training forward writes down its sample indices, so the test checks that every
sample of every epoch was trained on exactly once across the kill; the epoch's sample count
and loss, and the final weights, match the uninterrupted run to rounding (the reduction order
differs between process counts, so bitwise equality is not expected).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch
import warm
from launching import ROOT, launch_env, run_script

from distlearn.training import checkpoint
from distlearn.accumulators import Mean
from distlearn.metrics import F1, Accuracy
from distlearn.training.epoch import merged_accumulator_state
from distlearn.training.progress import reshard

SCRIPT = Path(__file__).parent / "scripts" / "elastic_run.py"
GLOBAL_BATCH, N_SAMPLES, N_EPOCHS, KILL_STEP = 6, 48, 3, 14  # 8 steps per epoch; checkpoints every 4 steps


def _run(procs: int, run_dir: Path, result: Path, kill: str | None = None, **env: str) -> subprocess.CompletedProcess:
    env = {"N_SAMPLES": str(N_SAMPLES), "N_EPOCHS": str(N_EPOCHS), **env}
    return run_script(SCRIPT, procs, run_dir, result, kill, **env)


def _samples(run_dir: Path, attempt: int, steps: range) -> dict[int, list[tuple[int, list[int]]]]:
    """epoch -> [(optimizer step before the batch, indices)] of one attempt, the steps in ``steps`` only."""
    out: dict[int, list[tuple[int, list[int]]]] = defaultdict(list)
    for file in sorted(run_dir.glob(f"samples-{attempt}-*.txt")):
        for line in file.read_text().splitlines():
            epoch, step, *idx = map(int, line.split())
            if step in steps:
                out[epoch].append((step, idx))
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    base = tmp_path_factory.mktemp("full2")
    done = _run(2, base / "run", base / "result.json")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((base / "result.json").read_text())


_KILLED: dict[tuple, Path] = {}


def _killed(before: int, kill_step: int, env: dict[str, str], tmp_path: Path) -> Path:
    """The folder of a run on ``before`` processes SIGKILLed after optimizer step ``kill_step``.

    Killed once per (processes, step, environment) in the session: the tests that resume the same killed
    run on different numbers of processes each resume their own copy of it.
    """
    key = (before, kill_step, tuple(sorted(env.items())))
    if key not in _KILLED:
        run_dir = tmp_path / "killed"
        killed = _run(before, run_dir, tmp_path / "killed.json", f"step:{kill_step}", **env)
        assert killed.returncode != 0 and "SIGKILL at step" in killed.stderr, killed.stderr[-3000:]
        _KILLED[key] = run_dir
    return _KILLED[key]


def _kill_and_resume(tmp_path: Path, reference: dict, before: int, after: int, kill_step: int, **env: str) -> dict:
    """Kill a run on ``before`` processes after optimizer step ``kill_step``, finish it on ``after``; check it.

    Every sample of every epoch must be trained on exactly once across the kill, and the record and
    weights must match ``reference`` (the uninterrupted run's result) to rounding. Returns the checkpoint's meta.
    """
    n_samples = int(env.get("N_SAMPLES", N_SAMPLES))
    run_dir, result = tmp_path / "run", tmp_path / "result.json"
    shutil.copytree(_killed(before, kill_step, env, tmp_path), run_dir)
    saved = checkpoint.latest(run_dir)
    assert saved is not None and saved[1]["world_size"] == before and saved[1]["batches_done"] > 0  # mid-epoch
    # the loader's own per-process batch is the old one: the learner must resize it to keep the global batch
    done = _run(after, run_dir, result, ATTEMPT="1", PER_PROCESS=str(GLOBAL_BATCH // before), **env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"written by {before} processes, this launch has {after}" in done.stderr
    assert f"global batch {GLOBAL_BATCH} kept ({GLOBAL_BATCH // after} per process)" in done.stderr
    out = json.loads(result.read_text())
    resumed_step = out["resumed_step"]
    assert resumed_step == saved[1]["step"] < kill_step

    # every sample of every epoch exactly once: the killed attempt's batches before the checkpoint, then the rest
    first = _samples(run_dir, 0, range(resumed_step))
    second = _samples(run_dir, 1, range(resumed_step, 10**9))
    for epoch in range(N_EPOCHS):
        seen = Counter(i for _, idx in first.get(epoch, []) + second.get(epoch, []) for i in idx)
        assert seen == Counter(range(n_samples)), f"epoch {epoch}: {sorted((seen - Counter(range(n_samples))).items())}"
    assert first and second  # both attempts trained

    ref, got = reference["record"]["training"], out["record"]["training"]
    assert sorted(got) == sorted(ref)
    for epoch in ref:
        assert got[epoch]["samples"] == ref[epoch]["samples"] == n_samples
        assert got[epoch]["train_loss"] == pytest.approx(ref[epoch]["train_loss"], rel=1e-6)
        assert got[epoch]["train_score"] == pytest.approx(ref[epoch]["train_score"], abs=1e-12)
        assert got[epoch]["optimizer_steps"] == ref[epoch]["optimizer_steps"]
        assert got[epoch]["lr"] == pytest.approx(ref[epoch]["lr"], rel=1e-12)
    torch.testing.assert_close(torch.tensor(out["weights"]), torch.tensor(reference["weights"]), rtol=0, atol=1e-5)
    return saved[1]


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2), (2, 3)])
def test_kill_and_resume_on_another_world_size(tmp_path, uninterrupted, before, after):
    _kill_and_resume(tmp_path, uninterrupted, before, after, KILL_STEP)


# 54 samples: 9 full global batches an epoch; ACCUM=2 makes 5 optimizer steps of 2, 2, 2, 2 and 1 batches
ACCUMULATED = {"ACCUM": "2", "N_SAMPLES": "54"}


@pytest.fixture(scope="module")
def uninterrupted_accumulated(tmp_path_factory):
    base = tmp_path_factory.mktemp("full2accum")
    done = _run(2, base / "run", base / "result.json", **ACCUMULATED)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads((base / "result.json").read_text())
    assert [e["optimizer_steps"] for e in out["record"]["training"].values()] == [5, 10, 15]
    return out


@pytest.mark.parametrize("before, after", [(2, 1), (2, 3)])
def test_gradient_accumulation_resumes_on_another_world_size(tmp_path, uninterrupted_accumulated, before, after):
    """Killed after step 9: the newest checkpoint is step 8, 6 batches into epoch 2 (3 of its 5 steps done).

    The resumed ranks must accumulate batches 7-8 into step 9 and step on batch 9 alone at the epoch's
    end, as the uninterrupted run did, on another number of processes.
    """
    saved = _kill_and_resume(tmp_path, uninterrupted_accumulated, before, after, 9, **ACCUMULATED)
    assert (saved["step"], saved["epoch"], saved["batches_done"]) == (8, 1, 6)


# ---------------------------------------------------------------------- merging the partial epoch


def _progress(rank: int, losses: list[float], sizes: list[int], metric: Accuracy) -> dict:
    running = Mean()
    running.extend(torch.tensor(losses), torch.tensor(sizes, dtype=torch.float64))
    return {
        "epoch": 1, "step": 7, "batches_done": len(losses), "seed": 3, "world_size": 2, "rank": rank,
        "log": {"losses": torch.tensor(losses), "sizes": sizes, "times": [1.0] * len(losses),
                "running": running.state_dict(), "running_upto": len(losses), "skipped_steps": 0},
        "metric": metric.state_dict(), "record": {"training": {}}, "rng": None, "extra": {},
    }


@pytest.mark.parametrize("world", [1, 2, 3])
def test_reshard_sums_into_rank_zero(world):
    a, b = Accuracy(), Accuracy()
    a.update(y_pred=torch.tensor([1, 0, 1]), y_true=torch.tensor([1, 1, 1]))
    b.update(y_pred=torch.tensor([0, 0]), y_true=torch.tensor([0, 1]))
    saved = [_progress(0, [0.5, 1.0], [3, 3], a), _progress(1, [2.0, 4.0], [3, 1], b)]
    shares = [reshard(saved, r, world, Accuracy()) for r in range(world)]
    # the batch losses: rank 0 holds the sample-weighted loss of both, the others weight 0
    torch.testing.assert_close(shares[0]["log"]["losses"], torch.tensor([1.25, 1.75]))
    assert shares[0]["log"]["sizes"] == [6, 4] and all(s["log"]["sizes"] == [0, 0] for s in shares[1:])
    # what the new ranks' reduction gives equals what the old ranks' gave
    for name in ("metric",):
        merged = Accuracy()
        total = sum(torch.stack(list(s[name]["states"].values())) for s in shares)
        old = sum(torch.stack(list(p[name]["states"].values())) for p in saved)
        torch.testing.assert_close(total, old)
        merged.load_state_dict(shares[0][name])
        assert merged.value() == pytest.approx(3 / 5)
    running = sum(torch.stack(list(s["log"]["running"]["states"].values())) for s in shares)
    torch.testing.assert_close(running, sum(torch.stack(list(p["log"]["running"]["states"].values())) for p in saved))
    # generators re-derived per rank, reproducibly
    again = reshard(saved, 0, world, Accuracy())
    assert torch.equal(again["rng"]["torch"], shares[0]["rng"]["torch"])
    if world > 1:
        assert not torch.equal(shares[1]["rng"]["torch"], shares[0]["rng"]["torch"])


def test_reshard_f1_confusion_and_lists():
    f = [F1(num_classes=3), F1(num_classes=3)]
    f[0].update(y_pred=torch.tensor([0, 1]), y_true=torch.tensor([0, 2]))
    f[1].update(y_pred=torch.tensor([2]), y_true=torch.tensor([2]))
    states = [m.state_dict() for m in f]
    merged = [merged_accumulator_state(states, r, 3, F1(num_classes=3)) for r in range(3)]
    torch.testing.assert_close(sum(m["states"]["confusion"] for m in merged),
                               states[0]["states"]["confusion"] + states[1]["states"]["confusion"])
    lists = [{"items": ["a0", "a1"]}, {"items": ["b0", "b1"]}]  # step-major: a0 b0 a1 b1
    dealt = [merged_accumulator_state(lists, r, 2, None)["items"] for r in range(2)]
    assert dealt == [["a0", "a1"], ["b0", "b1"]]


# ---------------------------------------------------------------------- batch sizes on another world size


def _fake_checkpoint(tmp_path: Path, world: int, global_batch: int, batches_done: int) -> Path:
    path = tmp_path / "checkpoints" / "step-00000004"
    path.mkdir(parents=True)
    (path / checkpoint.MARKER).write_text(json.dumps({
        "step": 4, "epoch": 0, "batches_done": batches_done, "world_size": world, "global_batch": global_batch,
        "files": {},
    }))
    return path


def test_global_batch_kept_or_refused(tmp_path):
    store = checkpoint.Checkpoints(tmp_path, resume_from=_fake_checkpoint(tmp_path, 2, 6, 3))
    assert store.per_process_batch(2, 3) == 3
    assert store.per_process_batch(1, 3) == 6
    assert store.per_process_batch(3, 3) == 2
    with pytest.raises(checkpoint.CheckpointError, match=r"global batch of 6 samples .*4 processes cannot split it"):
        store.per_process_batch(4, 3)
    per_process = checkpoint.Checkpoints(tmp_path, resume_from=store.resume_from, resume_batch="per_process")
    with pytest.raises(checkpoint.CheckpointError, match="middle of epoch 1.*resume_batch: global"):
        per_process.per_process_batch(3, 3)  # would make the global batch 9 mid-epoch
    assert per_process.per_process_batch(3, 2) == 2  # the same global batch: fine
    with pytest.raises(ValueError, match="resume_batch must be one of"):
        checkpoint.Checkpoints(tmp_path, resume_batch="both")


@pytest.mark.parametrize("world, current, found, fixes", [
    (3, 3, "found run.resume_batch: per_process with the loader's 3 per process on 3 processes, 9 per step",
     ["set run.resume_batch: global (the default) to keep 6 per step (2 per process)",
      "keep per_process with a loader batch size of 2", "launch 2 processes"]),
    (4, 3, "found run.resume_batch: per_process with the loader's 3 per process on 4 processes, 12 per step",
     ["to keep 6 per step on a number of processes that divides it (one of [1, 2, 3, 6]; 4 does not)",
      "launch 2 processes"]),
    (3, None, "found a training loader without batch_size (a batch_sampler) on 3 processes",
     ["build the DataLoader with batch_size=, so that run.resume_batch: global (the default) keeps 6 per step "
      "(2 per process)", "launch 2 processes"]),
])
def test_a_mid_epoch_refusal_names_the_key_expected_found_and_the_fixes(tmp_path, world, current, found, fixes):
    resume_batch = "per_process" if current else "global"  # no batch_size: refused whatever the policy
    store = checkpoint.Checkpoints(tmp_path, resume_from=_fake_checkpoint(tmp_path, 2, 6, 3), resume_batch=resume_batch)
    with pytest.raises(checkpoint.CheckpointError) as refused:
        store.per_process_batch(world, current)
    text = str(refused.value)
    assert "step-00000004 was saved in the middle of epoch 1 (after batch 3)" in text
    assert "expected 6 samples per step (2 processes of 3)" in text and found in text
    for fix in [*fixes, "resume from an epoch-end checkpoint (run.resume=<its path>)"]:
        assert fix in text, f"{fix!r} not in {text!r}"
    if world % 6 and 6 % world:
        assert "keep per_process with" not in text  # no loader batch size fits


def test_per_process_mid_epoch_on_another_world_size_is_refused_before_training(tmp_path):
    """The real launch: killed mid-epoch on 2 processes, started on 3 with per_process batches of 3."""
    run_dir, result = tmp_path / "run", tmp_path / "result.json"
    shutil.copytree(_killed(2, KILL_STEP, {}, tmp_path), run_dir)  # the killed run the resume tests start from
    refused = _run(3, run_dir, result, ATTEMPT="1", RESUME_BATCH="per_process", PER_PROCESS="3")
    assert refused.returncode != 0 and not result.exists()
    assert "CheckpointError" in refused.stderr and "found run.resume_batch: per_process with the loader's 3 per " \
        "process on 3 processes, 9 per step" in refused.stderr, refused.stderr[-3000:]
    assert not list(run_dir.glob("samples-1-*.txt"))  # refused before any training step


def test_per_process_from_an_epoch_end(tmp_path):
    store = checkpoint.Checkpoints(tmp_path, resume_from=_fake_checkpoint(tmp_path, 2, 6, 0), resume_batch="per_process")
    assert store.per_process_batch(3, 3) == 3  # global batch 9 from the next epoch on


# ---------------------------------------------------------------------- automatic restarts under torchrun


@pytest.fixture(scope="module")
def restart_reference(tmp_path_factory):
    """The uninterrupted run of the restart tests (launch/torchrun.sh, 2 CPU processes)."""
    from elastic_restart import reference

    return reference(tmp_path_factory.mktemp("restart-reference"))


@pytest.mark.parametrize("plain", [False], ids=["torchrun.sh"])  # plain torchrun: the soak's --plain
def test_a_killed_rank_restarts_and_resumes_under_torchrun(tmp_path, restart_reference, plain):
    """A worker SIGKILLed mid-run with MAX_RESTARTS=1: the launch resumes by itself and ends as if never killed.

    benchmarks/soak_elastic_restart.py repeats it 10 times in a row (``--plain``: through plain
    ``torchrun --standalone --max-restarts 1``, where the library's per-attempt store prefix does the work).
    """
    from elastic_restart import killed_and_restarted

    ok, why = killed_and_restarted(tmp_path / "attempt", restart_reference, plain=plain)
    assert ok, why


# ---------------------------------------------------------------------- the CLI side


def test_a_relaunch_with_the_same_launch_id_continues_its_default_folder(tmp_path):
    """No run.output_dir: the folder is runs/<config>-<launch id>, so a restarted launch resumes there."""
    cmd = [sys.executable, "-m", "distlearn", "train", "--quiet", str(ROOT / "configs" / "wine.yaml"),
           "run.tracking.backend=none"]
    env = launch_env(DISTLEARN_RUN_ID="job-7")
    first = warm.run(cmd + ["learner_configs.learner_parameters.n_epochs=1"], cwd=tmp_path, env=env, timeout=120)
    assert first.returncode == 0, first.stderr[-3000:]
    again = warm.run(cmd + ["learner_configs.learner_parameters.n_epochs=2"], cwd=tmp_path, env=env, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["wine-job-7"]
    assert "resuming from checkpoint" in again.stderr and "the start of epoch 2" in again.stderr
    record = json.loads((tmp_path / "runs" / "wine-job-7" / "record.json").read_text())
    assert sorted(record["training"]) == ["0", "1"]


def test_a_group_that_cannot_form_is_a_launch_failure_not_bad_input(monkeypatch):
    from distlearn.command.errors import EXIT_BAD_INPUT, EXIT_TRAINING_FAILED
    from distlearn.command.group import group_failure, is_group_failure

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    refused = RuntimeError("Gloo connectFullMesh failed with ... SO_ERROR: Connection refused, remote=[127.0.0.1]:32667")
    assert is_group_failure(refused)
    assert not is_group_failure(RuntimeError("2 processes were launched (WORLD_SIZE=2) but the Accelerator sees 1"))
    error = group_failure(refused)
    assert error.exit_code == EXIT_TRAINING_FAILED != EXIT_BAD_INPUT
    assert "on restart 1 of this launch" in str(error)
