"""`distlearn evaluate` and `load_run(...).evaluate()`: a saved run's weights give back its record's test numbers,
bitwise, on 1 and 2 processes; eval-<checkpoint>.json next to the run, the run's files untouched; the numbers in
the run's W&B summary; `model_configs.init_from`; bad input refused with one line and exit 2.

The runs are trained once per session (real `distlearn train` processes); evaluation runs in this process
(the command's `main`), in the pool's gloo groups (the API) or on 2 processes forked warm (the command; tests/warm.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import warm
from conftest import reset_accelerate
from launching import launch_env
from test_cli import distlearn, run_env
from test_tracking import wandb_records

from distlearn.command.cli import main

EPOCHS = "learner_configs.learner_parameters.n_epochs=2"
NO_TRACKING = "run.tracking.backend=none"


def trained(tmp_path_factory, name: str, *args: str, env: dict[str, str] | None = None) -> Path:
    """A run of `distlearn train ARGS` in a session folder ``name``, trained once per session."""
    out = tmp_path_factory.getbasetemp() / f"evalpred-{name}"
    if not (out / "record.json").exists():
        result = distlearn(*args, f"run.output_dir={out}", cwd=out.parent, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """The default digits MLP, 2 epochs, tracked by W&B offline (its files under the tests' WANDB_DIR)."""
    return trained(tmp_path_factory, "digits", EPOCHS, env=run_env(WANDB_MODE="offline"))


def last_test(run: Path, epoch: int | None = None) -> dict:
    training = json.loads((run / "record.json").read_text())["training"]
    return training[str(max(map(int, training)) if epoch is None else epoch)]["test_result"]


def numbers(result: dict) -> dict:
    return {k: result[k] for k in ("test_loss", "test_score", "test_scores", "metric_name")}


def command(capsys, *argv: str) -> tuple[int, str, str]:
    """`distlearn ARGV` in this process: its exit code, stdout and stderr."""
    import logging

    for handler in logging.getLogger("distlearn").handlers[:]:  # bound to an earlier test's captured stderr
        logging.getLogger("distlearn").removeHandler(handler)
    reset_accelerate()
    try:
        code = main(list(argv))
    finally:
        reset_accelerate()
    out, err = capsys.readouterr()
    return code, out, err


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith("eval-")}


# --------------------------------------------------------------------------- the command, 1 process


def test_evaluate_gives_the_records_last_test_numbers_and_leaves_the_run_alone(digits_run, capsys):
    before = digests(digits_run)
    code, out, err = command(capsys, "evaluate", str(digits_run), "-q")
    assert code == 0, err
    written = json.loads((digits_run / "eval-last.json").read_text())
    assert numbers(written) == numbers(last_test(digits_run))  # bitwise: == on the floats
    assert written["checkpoint"] == "last" and written["weights"] == str(digits_run / "model.safetensors")
    assert f"test_loss {written['test_loss']!r}, accuracy {written['test_score']!r}" in out
    assert digests(digits_run) == before  # nothing of the run was rewritten


def test_evaluate_adds_its_numbers_to_the_runs_wandb_summary(digits_run, capsys):
    from distlearn.experiment.saved_run import wandb_run_id

    run_id = wandb_run_id(digits_run)
    assert run_id
    wandb_root = Path(run_env()["WANDB_DIR"]) / "wandb"
    before = set(wandb_root.glob(f"offline-run-*-{run_id}*"))  # a second start within a second gets "-1"
    code, out, err = command(capsys, "evaluate", str(digits_run), "-q")
    assert code == 0, err
    assert f"W&B run {run_id} (offline): summary eval/last/*" in out
    new = set(wandb_root.glob(f"offline-run-*-{run_id}*")) - before  # the same run id, resumed
    records = [r for folder in new for file in folder.glob("run-*.wandb") for r in wandb_records(file)]
    summary = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
               for r in records if r.WhichOneof("record_type") == "summary" for item in r.summary.update}
    want = last_test(digits_run)
    assert "eval/last/test_loss" in summary, (new, summary, [r.WhichOneof("record_type") for r in records])
    assert summary["eval/last/test_loss"] == want["test_loss"]
    assert summary["eval/last/accuracy"] == want["test_score"]
    assert not [r for r in records if r.WhichOneof("record_type") == "history"]  # no step logged: W&B's steps only rise


def test_a_checkpoint_gives_its_epochs_numbers_and_best_reads_best_folder(digits_run, capsys, tmp_path):
    first = sorted((digits_run / "checkpoints").glob("step-*"))[0]  # the end of epoch 1
    code, _, err = command(capsys, "evaluate", str(digits_run), "--checkpoint", first.name, "-q")
    assert code == 0, err
    assert numbers(json.loads((digits_run / f"eval-{first.name}.json").read_text())) == numbers(last_test(digits_run, 0))
    # best/ as run.checkpoint.keep_best writes it: model.safetensors and best.json
    run = tmp_path / "run"
    shutil.copytree(digits_run, run, ignore=shutil.ignore_patterns("wandb"))
    (run / "best").mkdir()
    shutil.copy(first / "model.safetensors", run / "best" / "model.safetensors")
    (run / "best" / "best.json").write_text(json.dumps({"epoch": 0, "score": 0.5, "metric": "accuracy"}))
    code, out, err = command(capsys, "evaluate", str(run), "--checkpoint", "best", "run.tracking.backend=none", "-q")
    assert code == 0, err
    assert "the best epoch's weights (epoch 1, accuracy 0.5)" in out
    assert numbers(json.loads((run / "eval-best.json").read_text())) == numbers(last_test(digits_run, 0))


# --------------------------------------------------------------------------- 2 processes


def _evaluate_on_ranks(rank: int, world: int, run: str, checkpoint: str) -> dict:
    from distlearn import load_run

    reset_accelerate()
    try:
        return load_run(run, checkpoint=checkpoint, overrides=["run.tracking.backend=none"]).evaluate()
    finally:
        reset_accelerate()


def test_load_run_evaluates_on_two_processes_what_one_gives(digits_run, dist_pool):
    results = dist_pool.run(_evaluate_on_ranks, 2, str(digits_run), "last")  # 360 samples at 64: padding left out
    assert numbers(results[0]) == numbers(results[1]) == numbers(last_test(digits_run))


def test_evaluate_on_two_processes_prints_and_writes_what_one_process_does(digits_run, tmp_path, capsys):
    """The command on 2 processes (forked warm as a hand launch: the launcher is not the claim)."""
    run = tmp_path / "run"
    shutil.copytree(digits_run, run, ignore=shutil.ignore_patterns("wandb", "eval-*"))
    code, one, err = command(capsys, "evaluate", str(run), NO_TRACKING, "-q")
    assert code == 0, err
    single = (run / "eval-last.json").read_bytes()
    result = warm.run([sys.executable, "-m", "distlearn", "evaluate", str(run), NO_TRACKING, "-q"],
                      env=launch_env(), timeout=240, cwd=tmp_path, procs=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == one  # printed once, the same text
    assert (run / "eval-last.json").read_bytes() == single


# --------------------------------------------------------------------------- init_from


def test_init_from_loads_exactly_the_saved_weights_and_nothing_else(digits_run, fresh_accelerate):
    """A new experiment from the digits run's weights: the model holds them bitwise and tests as the run ended;
    the learner starts at epoch 0, step 0 (weights only: no optimizer, no progress)."""
    import torch

    from distlearn.experiment.config import build_experiment, load_config
    from distlearn.experiment.weights import read_weights

    experiment = build_experiment(load_config(None, [f"model_configs.init_from={digits_run}", NO_TRACKING]))
    saved = read_weights(digits_run / "model.safetensors")
    model = experiment.model.state_dict()
    assert model.keys() == saved.keys() and all(torch.equal(model[k], saved[k]) for k in saved)
    assert (experiment.learner.epoch, experiment.learner.step, experiment.learner.optimizer) == (0, 0, None)
    result = experiment.learner.test(experiment.model, experiment.data_loaders["test_loader"], metric=experiment.metric,
                                     return_full_result=False)
    assert numbers(result) == numbers(last_test(digits_run))


def test_init_from_refuses_a_model_of_another_shape_naming_keys_and_shapes(digits_run, tmp_path):
    from distlearn.experiment.config import ConfigError, build_experiment, load_config

    def build(*overrides: str):
        return build_experiment(load_config(None, [f"model_configs.init_from={digits_run}", NO_TRACKING, *overrides]))

    with pytest.raises(ConfigError) as wide:
        build("model_configs.model_parameters.hidden_sizes=[32]")
    assert ("model_configs.init_from: the weights in" in str(wide.value)
            and "the first shape mismatch: layers.0.weight is [256, 64] in the file, [32, 64] in the model" in str(wide.value))
    with pytest.raises(ConfigError) as deeper:
        build("model_configs.model_parameters.hidden_sizes=[256,10]")
    assert "2 missing keys (layers.6.weight, layers.6.bias)" in str(deeper.value)
    with pytest.raises(ConfigError) as nowhere:
        build(f"model_configs.init_from={tmp_path / 'none'}")
    assert f"model_configs.init_from: '{tmp_path / 'none'}' does not exist" in str(nowhere.value)
    with pytest.raises(ConfigError, match="model_configs.init_from: expected a run folder, a checkpoint folder or a "
                                          "model.safetensors path, got 5"):
        build("model_configs.init_from=5")


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line_and_exit_2(digits_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    half = tmp_path / "half"
    shutil.copytree(digits_run, half, ignore=shutil.ignore_patterns("wandb"))
    (half / ".outputs-staging").mkdir()
    killed = tmp_path / "killed"  # a run killed before its first checkpoint
    (killed / "checkpoints" / "step-00000001").mkdir(parents=True)  # a save that never committed
    other = half / "checkpoints" / sorted(p.name for p in (half / "checkpoints").iterdir())[0]
    cases = {
        (str(tmp_path / "nope"),): "no such run folder",
        (str(tmp_path / "empty"),): "is not a run folder: it holds neither config.yaml nor checkpoints/",
        (str(digits_run), "--checkpoint", "step-9"): "--checkpoint 'step-9': expected best, last or a checkpoint folder",
        (str(digits_run), "--checkpoint", "best"): "the run kept no best weights (best/model.safetensors is missing",
        (str(half),): "its outputs are being replaced",
        (str(killed),): "holds no weights to evaluate: the run did not finish",
        (str(killed), "--checkpoint", "step-00000001"): "not a complete checkpoint: no commit marker COMMITTED.json",
        (str(digits_run), "--checkpoint", str(other)): "expected best, last or a checkpoint folder of this run",
    }
    for args, message in cases.items():
        code, out, err = command(capsys, "evaluate", *args)
        assert code == 2 and message in err, (args, err)
        lines = err.splitlines()  # the error in one line, last; before it at most the store's warning on the
        assert lines[-1].startswith("distlearn: error: ") and sum("error" in line for line in lines) == 1, err
        assert len(lines) == 1 or lines[0].startswith("skipping checkpoint"), err  # uncommitted checkpoint
    code, _, err = command(capsys, "evaluate", str(digits_run), "run.sed=3")  # an override, checked as in training
    assert code == 2 and "run.sed: unknown key of run" in err, err


def test_overrides_point_at_other_data_of_the_same_shape_and_refuse_another_shape(digits_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run, ignore=shutil.ignore_patterns("wandb", "eval-*"))
    other_split = ["data_configs.data_parameters.seed=1", NO_TRACKING]  # another test split of the digits
    code, out, err = command(capsys, "evaluate", str(run), *other_split, "-q")
    assert code == 0, err
    written = json.loads((run / "eval-last.json").read_text())
    assert written["overrides"] == other_split and written["test_loss"] != last_test(digits_run)["test_loss"]
    code, _, err = command(capsys, "evaluate", str(run), "data_configs.data_parameters.name=wine", NO_TRACKING, "-q")
    assert code == 2 and err.count("\n") == 1, err
    assert ("do not fit the model MLP: the first shape mismatch: layers.0.weight is [256, 64] in the file, "
            "[256, 13] in the model" in err), err
