"""The `distlearn train` command: outputs, the printed summary, refusing to overwrite, bad input.

Runs are real subprocesses (`python -m distlearn`, the console script), short digits trainings
(N_EPOCHS epochs). The one-process baseline run is shared with tests/test_launch.py through
`baseline_run` (cached under pytest's session temp folder).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import warm as warm_launch

REPO = Path(__file__).resolve().parents[1]
N_EPOCHS = 5
EPOCHS = f"learner_configs.learner_parameters.n_epochs={N_EPOCHS}"
NO_TRACKING = "run.tracking.backend=none"
TIMEOUT = 240
OUTPUTS = ["config.yaml", "record.json", "batches.jsonl", "model.safetensors", "curves.png"]


def run_env(**extra: str) -> dict[str, str]:
    """The environment of a launched run: no leftover rank variables, one thread per process."""
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    # One intra-op thread per process: tiny matmuls gain nothing from more, and on a busy 2-core
    # machine two spinning threads per process made a step 70x slower (160 ms instead of 2.3 ms).
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHON"] = sys.executable  # for the launch scripts
    env.update(extra)
    return env


def run_command(command: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = TIMEOUT,
                warm: bool = False):
    """Run a command in its own process group; on a timeout kill the whole group (launchers have children).

    ``warm``: fork it from the session's fork server (tests/warm.py), for ``python -m`` commands whose
    claim is not about the interpreter's start.
    """
    popen = warm_launch.Popen if warm else subprocess.Popen
    proc = popen(
        command, cwd=cwd, env=env or run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{command} timed out after {timeout} s\nstdout:\n{out}\nstderr:\n{err[-5000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def distlearn(*args: str, cwd: Path, env: dict[str, str] | None = None):
    """`python -m distlearn train ARGS` (quiet), warm."""
    return run_command([sys.executable, "-m", "distlearn", "train", *args, "-q"], cwd, env, warm=True)


def baseline_run(tmp_path_factory) -> Path:
    """The default config, one process, N_EPOCHS epochs, no CONFIG argument; run once per session."""
    out = tmp_path_factory.getbasetemp() / "baseline-1proc"
    if not (out / "record.json").exists():
        result = distlearn(EPOCHS, NO_TRACKING, f"run.output_dir={out}", cwd=out.parent)
        assert result.returncode == 0, result.stderr[-5000:]
        (out.parent / "baseline-1proc.stdout").write_text(result.stdout)
    return out


def final_test_score(run_dir: Path) -> float:
    record = json.loads((run_dir / "record.json").read_text())
    last = record["training"][str(max(map(int, record["training"])))]
    return last["test_result"]["test_score"]


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    return baseline_run(tmp_path_factory)


# --------------------------------------------------------------------------- a good run


def test_default_config_is_digits_and_all_outputs_are_valid(baseline):
    from omegaconf import OmegaConf
    from safetensors.torch import load_model

    from distlearn.experiment.config import resolve_class
    from distlearn.data import SklearnDataset

    assert sorted(p.name for p in baseline.iterdir()) == [
        "batches.jsonl", "checkpoints", "config.yaml", "curves.png", "model.safetensors", "record.json"
    ]

    config = OmegaConf.to_container(OmegaConf.load(baseline / "config.yaml"))
    assert config["data_configs"]["data_parameters"]["name"] == "digits"
    assert config["learner_configs"]["learner_parameters"]["n_epochs"] == N_EPOCHS
    assert config["run"]["output_dir"] == str(baseline)

    record = strict_json((baseline / "record.json").read_text())
    assert sorted(map(int, record["training"])) == list(range(N_EPOCHS))
    for epoch in record["training"].values():
        assert math.isfinite(epoch["train_loss"]) and 0 <= epoch["train_score"] <= 1
        assert epoch["test_result"]["metric_name"] == "accuracy"

    # The safetensors file holds the FINAL weights: they give exactly the recorded final test accuracy.
    params = dict(config["model_configs"]["model_parameters"], in_features=64, out_features=10)
    model = resolve_class(config["model_configs"]["model_class"], "model_class")(**params)
    missing, unexpected = load_model(model, baseline / "model.safetensors")
    assert not missing and not unexpected
    _, x_test, _, y_test = SklearnDataset(**config["data_configs"]["data_parameters"]).split()
    with torch.no_grad():
        accuracy = (model.eval()(torch.from_numpy(x_test)).argmax(-1) == torch.from_numpy(y_test)).double().mean()
    assert float(accuracy) == pytest.approx(final_test_score(baseline), abs=1e-12)

    png = (baseline / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(baseline / "curves.png").shape
    assert width > 2 * height > 300  # three panels side by side

    stdout = (baseline.parent / "baseline-1proc.stdout").read_text().strip().splitlines()
    assert stdout[0].startswith("distlearn train: digits: MLP") and "1 process on cpu" in stdout[0]
    assert stdout[-1] == f"Output directory: {baseline}"
    assert any(line.split()[:2] == ["test", "loss"] for line in stdout)


def test_refuses_to_overwrite_an_earlier_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "record.json").write_text("the earlier run's record")
    result = distlearn(EPOCHS, NO_TRACKING, f"run.output_dir={out}", cwd=tmp_path)
    assert result.returncode == 2
    assert "already holds an earlier run" in result.stderr and "run.overwrite=true" in result.stderr
    assert "Traceback" not in result.stderr
    assert [p.name for p in out.iterdir()] == ["record.json"]
    assert (out / "record.json").read_text() == "the earlier run's record"


def test_overwrite_true_replaces_the_outputs_and_a_user_wandb_mode_is_respected(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "record.json").write_text("old")
    (out / "notes.txt").write_text("mine")
    env = run_env(WANDB_MODE="disabled")  # the user's WANDB_MODE wins over tracking.backend: wandb
    result = distlearn("learner_configs.learner_parameters.n_epochs=1", "run.overwrite=true",
                       f"run.output_dir={out}", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(strict_json((out / "record.json").read_text())["training"]) == 1
    assert (out / "notes.txt").read_text() == "mine"  # not ours: left alone
    assert not (out / "wandb").exists()
    assert "tracking   off (WANDB_MODE=disabled)" in result.stdout
    assert not list(out.glob(".*.tmp"))
    assert result.stdout.strip().splitlines()[-1] == f"Output directory: {out.resolve()}"


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["run.sede=3", "learner_configs.learner_parameters.n_epoch=2", "model_configs.model_parameters.dropout=2"],
            ["3 problems", "run.sede", "did you mean 'run.seed'", "learner_configs.learner_parameters.n_epoch",
             "'n_epochs'", "model_configs.model_parameters.dropout"],
        ),
        (["missing.yaml"], ["'missing.yaml'", "not found"]),
    ],
    ids=["bad-keys-and-values", "missing-file"],
)
def test_bad_input_exits_2_with_a_message_naming_the_problem(tmp_path, args, expected):
    result = distlearn(*args, NO_TRACKING, f"run.output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("distlearn: error: ")
    for text in expected:
        assert text in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was created


def test_mixed_precision_is_the_configs_else_the_launchers(monkeypatch):
    from accelerate.state import AcceleratorState, GradientState

    from distlearn.runtime.accelerator import build_accelerator

    def built(configured):
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        try:
            return build_accelerator(mixed_precision=configured).mixed_precision
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert built(None) == "no" and built("bf16") == "bf16"  # no launcher: Accelerate's default
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # e.g. configs/accelerate/fsdp.yaml
    assert built(None) == "bf16"
    assert built("no") == "no"  # an explicit config value wins, as Accelerator(mixed_precision=...) does



def test_console_script_and_usage(tmp_path):
    # pip puts console scripts beside the interpreter (a PATH lookup may miss them, e.g. un-rehashed pyenv shims)
    exe = Path(sys.executable).parent / "distlearn"
    assert exe.is_file(), f"no console script at {exe}: install the package (pip install -e .)"
    result = run_command([str(exe), "train", "--help"], tmp_path)
    assert result.returncode == 0 and "key.path=value" in result.stdout


def test_options_may_come_between_the_overrides(tmp_path):
    out = tmp_path / "out"
    result = run_command([sys.executable, "-m", "distlearn", "train", "wine", "learner_configs.learner_parameters.n_epochs=1",
                          "-q", NO_TRACKING, f"run.output_dir={out}"], tmp_path, warm=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == f"Output directory: {out}"
    assert "epoch 1" not in result.stderr.lower()  # -q was taken as the option, not lost
    assert json.loads((out / "config.yaml").parent.joinpath("record.json").read_text())["status"] == "completed"
    bad = run_command([sys.executable, "-m", "distlearn", "train", "wine", "-x", NO_TRACKING], tmp_path, warm=True)
    assert bad.returncode == 2 and "unrecognized arguments: -x" in bad.stderr


# What a quick answer may import: the command's --help, --version and the config errors found before any
# class is imported run without torch (~1.5 s to import here); a misspelled class needs torch, but not
# torch._dynamo (as long again), which only building an optimizer imports.
QUICK_ANSWERS = """
import contextlib, io, json, sys
from distlearn.command.cli import main
heavy = ("torch", "torch._dynamo", "accelerate", "sklearn", "wandb", "matplotlib")
answers = []
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    answers.append([code, [m for m in heavy if m in sys.modules], err.getvalue()])
print(json.dumps(answers))
"""


def _quick(tmp_path: Path, *argvs: list[str]) -> list:
    result = run_command([sys.executable, "-c", QUICK_ANSWERS, json.dumps(argvs)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_help_version_and_early_config_errors_import_no_torch(tmp_path):
    answers = _quick(tmp_path, ["--help"], ["--version"], ["train", "--help"], ["train", "missing.yaml"],
                     ["train", "run.seed=[1"], ["train", "wnie"])
    assert [code for code, _, _ in answers] == [0, 0, 0, 2, 2, 2], answers
    assert all(imported == [] for _, imported, _ in answers), answers
    assert "not found" in answers[3][2] and "did you mean" in answers[5][2]


def test_a_misspelled_class_is_answered_without_torchs_compiler(tmp_path):
    (answer,) = _quick(tmp_path, ["train", "model_configs.model_class=distlearn.models.MLPP", NO_TRACKING])
    code, imported, err = answer
    assert code == 2 and "did you mean 'distlearn.models.MLP'" in err, answer
    assert "torch" in imported and "torch._dynamo" not in imported and "sklearn" not in imported, answer
    assert not list(tmp_path.iterdir())  # nothing written


# --------------------------------------------------------------------------- the pieces, in-process


def test_output_dir_rules(tmp_path, monkeypatch):
    from datetime import datetime

    from distlearn.command.run_folder import OutputDirError, default_output_dir, prepare_output_dir

    monkeypatch.chdir(tmp_path)
    now = datetime(2026, 1, 2, 3, 4, 5)
    assert default_output_dir(None, now) == Path("runs") / "digits-20260102-030405"  # the default config's name
    first = prepare_output_dir(None, False, "configs/wine.yaml", now)
    second = prepare_output_dir(None, False, "configs/wine.yaml", now)  # same second: a new folder, never shared
    assert first == tmp_path / "runs" / "wine-20260102-030405"
    assert second == tmp_path / "runs" / "wine-20260102-030405-2"
    assert prepare_output_dir("empty", False) == tmp_path / "empty"  # an empty folder is fine
    (tmp_path / "empty" / "x").write_text("")
    with pytest.raises(OutputDirError, match=r"is not empty and holds no distlearn run \(x\)"):
        prepare_output_dir("empty", False)  # someone's files, not a run
    (tmp_path / "empty" / "record.json").write_text("{}")
    with pytest.raises(OutputDirError, match=r"already holds an earlier run \(record.json, x\)"):
        prepare_output_dir("empty", False)
    assert prepare_output_dir("empty", True) == tmp_path / "empty"
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputDirError, match="not a folder"):
        prepare_output_dir("file", True)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    from distlearn.command.files import atomic_write, write_record

    target = tmp_path / "record.json"
    target.write_text("old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["record.json"]

    write_record(target, {"training": {0: {"loss": float("nan"), "score": torch.tensor(0.5), "n": torch.tensor(3)}}})
    assert strict_json(target.read_text()) == {"training": {"0": {"loss": None, "score": 0.5, "n": 3}}}


def test_resuming_another_experiment_is_refused_before_training_naming_key_old_and_new(tmp_path):
    out = tmp_path / "run"
    first = distlearn("learner_configs.learner_parameters.n_epochs=1", NO_TRACKING, f"run.output_dir={out}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = (out / "record.json").read_bytes()
    again = distlearn(
        "learner_configs.learner_parameters.n_epochs=2", NO_TRACKING, f"run.output_dir={out}",
        "learner_configs.learner_parameters.optimizer_configs.optimizer_parameters.lr=0.5", cwd=tmp_path,
    )
    assert again.returncode == 2, again.stderr[-3000:]
    assert "the experiment differs from the one it saved" in again.stderr
    assert "learner_configs.learner_parameters.optimizer_configs.optimizer_parameters.lr: 0.001 in the checkpoint, 0.5 now" in again.stderr
    assert "n_epochs" not in again.stderr  # a change a resumed run may make
    assert (out / "record.json").read_bytes() == before  # nothing was trained or written
    fresh = distlearn("learner_configs.learner_parameters.n_epochs=1", NO_TRACKING, f"run.output_dir={out}",
                      "run.resume=none", cwd=tmp_path)
    assert fresh.returncode == 2 and "already holds an earlier run" in fresh.stderr  # none: a fresh start, refused here


def _output_set(folder: Path) -> dict[str, bytes]:
    """The output files in place in ``folder``, by name."""
    from distlearn.command.run_folder import OUTPUT_FILES

    return {name: (folder / name).read_bytes() for name in OUTPUT_FILES if (folder / name).exists()}


def _killed_writing(folder: Path, point: str, record: dict, weights: dict) -> int:
    """A forked process writes the outputs and SIGKILLs itself at ``point``; returns its exit code."""
    import multiprocessing

    from distlearn.command import files, run_folder
    from distlearn.runtime.launch import OUTPUTS_TEST_SIGNAL

    def write() -> None:
        os.environ[OUTPUTS_TEST_SIGNAL] = f"{point}:SIGKILL"
        run_folder.write_outputs(folder, {"run": {"seed": 1}}, record, weights)

    child = multiprocessing.get_context("fork").Process(target=write)  # torch and matplotlib already imported
    child.start()
    child.join(TIMEOUT)
    return child.exitcode


def test_a_kill_at_any_point_of_the_outputs_write_leaves_the_old_set_or_the_new_one(tmp_path):
    """SIGKILL after each file staged and after each file moved in: the folder holds the old set untouched
    (before the commit) or the old files beside a complete new set (after it), and recovery makes it one set."""
    from distlearn.command import files, run_folder

    old_record = {"training": {0: {"train_loss": 1.0, "batch_records": {0: {"loss": 1.0}}}}, "status": "completed"}
    new_record = {"training": {0: {"train_loss": 0.5, "batch_records": {0: {"loss": 0.7}, 1: {"loss": 0.3}}},
                               1: {"train_loss": 0.25, "batch_records": {0: {"loss": 0.25}}}}, "status": "interrupted"}
    n = len(run_folder.OUTPUT_FILES)
    points = [f"stage:{k}" for k in range(1, n + 1)] + [f"swap:{k}" for k in range(n + 1)]
    first = tmp_path / "old"
    first.mkdir()
    (first / "notes.txt").write_text("mine")
    run_folder.write_outputs(first, {"run": {"seed": 0}}, old_record, {"w": torch.zeros(2)})
    old = _output_set(first)
    assert sorted(old) == sorted(run_folder.OUTPUT_FILES)
    for point in points:
        folder = tmp_path / point.replace(":", "-")
        shutil.copytree(first, folder)
        assert _killed_writing(folder, point, new_record, {"w": torch.ones(3)}) == -signal.SIGKILL, point
        in_place, staged = _output_set(folder), folder / files.SWAPPING
        if point.startswith("stage:"):  # before the commit: the old set is whole and untouched
            assert in_place == old and not staged.exists(), point
        else:  # after it: every file is either still old (to be moved in) or already new
            pending = {p.name: p.read_bytes() for p in staged.iterdir()}
            moved = sorted(set(in_place) - set(pending))
            assert len(moved) == int(point.split(":")[1]) and sorted({*moved, *pending}) == sorted(old), point
            assert all(in_place[name] == old[name] for name in pending), point

        said = run_folder.recover_outputs(folder)  # what the next command does first
        assert ("the earlier set stays" if point.startswith("stage:") else "is now in place") in said, point
        assert sorted(p.name for p in folder.iterdir()) == sorted([*run_folder.OUTPUT_FILES, "notes.txt"]), point
        if point.startswith("stage:"):
            assert _output_set(folder) == old, point
        else:
            assert files.read_record(folder) == files.to_jsonable(new_record), point
            assert (folder / "config.yaml").read_text() == "run:\n  seed: 1\n"
        assert run_folder.recover_outputs(folder) is None  # nothing left to do
        assert (folder / "notes.txt").read_text() == "mine"


def test_a_write_that_fails_leaves_the_old_set_and_nothing_staged(tmp_path, monkeypatch):
    from distlearn.command import run_folder

    record, weights = {"training": {0: {"train_loss": 1.0}}}, {"w": torch.zeros(2)}
    run_folder.write_outputs(tmp_path, {"run": {"seed": 0}}, record, weights)
    old = _output_set(tmp_path)

    def broken(path, record, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(run_folder, "write_curves", broken)  # the last file of the set fails
    with pytest.raises(OSError, match="disk full"):
        run_folder.write_outputs(tmp_path, {"run": {"seed": 1}}, {"training": {}}, weights)
    assert _output_set(tmp_path) == old and sorted(p.name for p in tmp_path.iterdir()) == sorted(OUTPUTS)


def test_record_json_keeps_epochs_and_batches_jsonl_holds_what_the_record_held(tmp_path, fresh_accelerate):
    """Through the command's own path, in-process: record.json without per-batch values, a few hundred bytes per
    epoch; batches.jsonl one line per batch; joined again, exactly the record train() returned."""
    from distlearn.command.files import read_record, to_jsonable
    from distlearn.command.train_command import train

    out = tmp_path / "run"
    ours = logging.getLogger("distlearn")
    kept = list(ours.handlers), ours.propagate, ours.level
    try:
        record = train(None, ["learner_configs.learner_parameters.n_epochs=2", NO_TRACKING, f"run.output_dir={out}"],
                       quiet=True)
    finally:
        ours.handlers[:], ours.propagate, ours.level = kept
    assert all(len(epoch["batch_records"]) == 23 for epoch in record["training"].values())  # the API keeps them

    written = strict_json((out / "record.json").read_text())
    assert written["status"] == "completed" and sorted(written["training"]) == ["0", "1"]
    assert not any("batch_records" in epoch for epoch in written["training"].values())
    epoch = written["training"]["1"]
    per_epoch = len(json.dumps({k: v for k, v in epoch.items() if k != "throughput"}, indent=1))
    assert per_epoch < 1000, per_epoch  # was ~4.9 kB with 23 batches
    assert len(json.dumps(epoch["throughput"], indent=1)) < 800  # the epoch's measurements
    rows = [strict_json(line) for line in (out / "batches.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["batch"]) for r in rows] == [(e, b) for e in range(2) for b in range(23)]
    assert read_record(out) == to_jsonable(record)  # same keys, same order, same numbers
    # the per-batch losses are the batches of the epoch's loss: 22 of 64 samples and one of 29
    losses = [r["loss"] for r in rows if r["epoch"] == 1]
    assert (sum(losses[:-1]) * 64 + losses[-1] * 29) / 1437 == pytest.approx(written["training"]["1"]["train_loss"])


def _one_more_epoch(baseline: Path, out: Path, *args: str, signal_at: str | None = None):
    """The baseline's run copied to ``out`` and resumed for one more epoch (the test hook sends a signal)."""
    from distlearn.runtime.launch import OUTPUTS_TEST_SIGNAL

    if not out.exists():
        shutil.copytree(baseline, out)
    env = run_env(**({OUTPUTS_TEST_SIGNAL: signal_at} if signal_at else {}))
    return distlearn(f"learner_configs.learner_parameters.n_epochs={N_EPOCHS + 1}", NO_TRACKING,
                     f"run.output_dir={out}", *args, cwd=out.parent, env=env)


def test_a_kill_while_the_outputs_are_swapped_is_completed_by_the_next_command_and_overwrite_says_it_resumes(
        tmp_path, baseline):
    from distlearn.command.files import SWAPPING, read_record

    out = tmp_path / "run"
    killed = _one_more_epoch(baseline, out, "run.overwrite=true", signal_at="swap:2:SIGKILL")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    # run.overwrite=true continues the run: the first line says so, from where, and how to start over instead
    first = killed.stderr.strip().splitlines()[0]
    assert first.startswith(f"resuming from checkpoint {out}/checkpoints/step-") and f"(the start of epoch {N_EPOCHS + 1}," in first
    assert "run.overwrite=true keeps the folder's checkpoints and continues its run; to start over, add run.resume=none" in first
    assert sorted(p.name for p in (out / SWAPPING).iterdir()) == ["curves.png", "model.safetensors", "record.json"]
    assert len(strict_json((out / "record.json").read_text())["training"]) == N_EPOCHS  # the old one, until moved in

    again = _one_more_epoch(baseline, out, "run.overwrite=true")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "the new set was complete and is now in place" in again.stderr, again.stderr[-3000:]
    assert f"already complete ({N_EPOCHS + 1} epochs" in again.stdout  # the swap made the new set whole
    assert "run.overwrite=true keeps the folder's checkpoints and continues its run" in again.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(["checkpoints", *OUTPUTS])
    record = read_record(out)
    assert record["status"] == "completed" and len(record["training"]) == N_EPOCHS + 1
    assert all(len(epoch["batch_records"]) == 23 for epoch in record["training"].values())
    assert (out / "model.safetensors").read_bytes() != (baseline / "model.safetensors").read_bytes()


@pytest.mark.parametrize("signal_at, code", [("swap:1:SIGTERM", 143), ("stage:2:SIGINT", 130)])
def test_a_stop_signal_while_the_outputs_are_written_waits_for_them_then_exits_as_a_stop(tmp_path, baseline,
                                                                                         signal_at, code):
    out = tmp_path / "run"
    result = _one_more_epoch(baseline, out, signal_at=signal_at)
    name = signal_at.rsplit(":", 1)[1]
    assert result.returncode == code, result.stderr[-3000:]
    assert f"{name} received while the outputs are written: stopping once they are whole" in result.stderr
    assert f"distlearn: {name} came while the outputs were written: they were written whole" in result.stderr
    assert "before training started" not in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(["checkpoints", *OUTPUTS])  # nothing staged is left
    written = strict_json((out / "record.json").read_text())
    assert written["status"] == "completed" and len(written["training"]) == N_EPOCHS + 1
    assert result.stdout.strip().splitlines()[-1] == f"Output directory: {out}"


# --------------------------------------------------------------------------- resuming with more epochs, rerunning a finished run


def test_more_epochs_on_a_schedule_interpolated_from_n_epochs_says_how_to_keep_it_and_a_rerun_of_a_finished_run_trains_nothing(
        tmp_path):
    out = tmp_path / "run"
    t_max = "learner_configs.learner_parameters.lr_scheduler_configs.lr_scheduler_parameters.T_max"

    def diabetes(*args, env=None):
        return distlearn("diabetes", *args, f"run.output_dir={out}", cwd=tmp_path, env=env)

    first = diabetes("learner_configs.learner_parameters.n_epochs=1", NO_TRACKING)
    assert first.returncode == 0, first.stderr[-3000:]
    refused = diabetes("learner_configs.learner_parameters.n_epochs=2", NO_TRACKING)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert f"{t_max}: 1 in the checkpoint, 2 now (it is interpolated from n_epochs, 1 -> 2" in refused.stderr
    assert f"pin it: {t_max}=1" in refused.stderr
    pinned = diabetes("learner_configs.learner_parameters.n_epochs=2", f"{t_max}=1", NO_TRACKING)
    assert pinned.returncode == 0, pinned.stderr[-3000:]
    assert "resuming from checkpoint" in pinned.stderr and "(the start of epoch 2," in pinned.stderr
    assert sorted(json.loads((out / "record.json").read_text())["training"]) == ["0", "1"]

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    env = run_env(WANDB_MODE="offline")
    env.pop("WANDB_DIR", None)  # W&B would write under the run folder: it must not start at all
    rerun = diabetes("learner_configs.learner_parameters.n_epochs=2", f"{t_max}=1", env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "already complete (2 epochs" in rerun.stdout and "resuming" not in rerun.stderr, rerun.stdout + rerun.stderr
    assert rerun.stdout.strip().splitlines()[-1] == f"Output directory: {out}"
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # no file written, no W&B folder


def test_resume_lines_say_process_counts_in_words():
    from distlearn.command.console import processes as _processes
    from distlearn.command.resume import resume_hint

    assert _processes(1) == "1 process" and _processes(3) == "3 processes"
    args = ["train", "charlm", "run.output_dir=runs/x"]
    assert resume_hint(args, 1, {}) == "resume with: distlearn train charlm run.output_dir=runs/x"
    launched = resume_hint(args, 2, {"TORCHELASTIC_RUN_ID": "a"})
    assert launched.startswith("resume with the same launch (torchrun, 2 processes)") and "-m distlearn train" in launched
    scripted = resume_hint(args, 2, {"DISTLEARN_LAUNCH_COMMAND": "DISTLEARN_CPU_PROCS=2 launch/train.sh"})
    assert scripted == "resume with: DISTLEARN_CPU_PROCS=2 launch/train.sh charlm run.output_dir=runs/x"


def test_charlm_checkpoints_do_not_warn_about_its_tied_head_but_other_shared_tensors_still_warn(tmp_path, caplog):
    out = tmp_path / "run"
    result = distlearn("charlm", "learner_configs.learner_parameters.n_epochs=1", "data_configs.data_parameters.max_chars=20000",
                       "run.checkpoint.every_n_steps=10", NO_TRACKING, f"run.output_dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((out / "checkpoints").glob("step-*"))) >= 1
    assert "Removed shared tensor" not in result.stderr, result.stderr[-3000:]

    import torch
    from accelerate.state import PartialState
    from accelerate.utils.other import clean_state_dict_for_safetensors

    from distlearn.command.console import setup_logging as _setup_logging

    PartialState()  # Accelerate's logger needs its state
    ours = logging.getLogger("distlearn")
    kept = list(ours.handlers), ours.propagate, ours.level
    _setup_logging(is_main=True, quiet=True)
    ours.handlers[:], ours.propagate, ours.level = kept
    shared = torch.zeros(3)
    with caplog.at_level(logging.WARNING, logger="accelerate.utils.other"):
        clean_state_dict_for_safetensors({"token_embedding.weight": shared, "head.weight": shared})
        clean_state_dict_for_safetensors({"encoder.weight": shared, "decoder.weight": shared})
    removed = [r.getMessage() for r in caplog.records if "Removed shared tensor" in r.getMessage()]
    assert len(removed) == 1 and "decoder.weight" in removed[0], removed
