"""A validation split, the best epoch kept, early stopping (training/selection.py, data val_size).

Training runs in the session pool's real gloo processes (1 and 2 ranks); the resume test stops a
run by restarting it from its own checkpoints (an epoch's end and mid-epoch) and compares the
records bitwise; the rerun of an early-stopped run is the command itself.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from launching import without_clocks

from distlearn.command.files import to_jsonable

from distlearn.data import SklearnDataset
from distlearn.data.text import TextDataset
from distlearn.training.selection import Chooser, EarlyStopping, Selection, recover_best, write_best

REPO = Path(__file__).resolve().parents[1]
WINE = {"batch_size": 16, "val_size": 30, "seed": 0}  # 112 training rows: 7 full global batches of 16


# ---------------------------------------------------------------- the split


def test_val_size_holds_out_a_seeded_stratified_part_of_the_training_rows_only():
    plain = SklearnDataset("wine", standardize=False).parts()
    parts = SklearnDataset("wine", standardize=False, val_size=0.3).parts()
    again = SklearnDataset("wine", standardize=False, val_size=0.3).parts()
    assert np.array_equal(parts["test"][0], plain["test"][0])  # the test rows do not move
    assert len(parts["val"][0]) == math.ceil(0.3 * len(plain["train"][0]))
    rows = lambda x: {tuple(r) for r in x}  # noqa: E731
    assert rows(parts["train"][0]) | rows(parts["val"][0]) == rows(plain["train"][0])
    assert not rows(parts["train"][0]) & rows(parts["val"][0])
    assert not rows(parts["val"][0]) & rows(parts["test"][0])
    for k in parts:  # seeded
        assert np.array_equal(parts[k][0], again[k][0])
    shares = [np.bincount(parts[k][1], minlength=3) / len(parts[k][1]) for k in ("train", "val")]
    assert np.abs(shares[0] - shares[1]).max() < 0.05  # stratified like the test split
    other = SklearnDataset("wine", standardize=False, val_size=0.3, seed=1).parts()
    assert not np.array_equal(other["val"][0], parts["val"][0])
    counted = SklearnDataset("wine", val_size=20).parts()
    assert len(counted["val"][0]) == 20
    x_train, x_val = counted["train"][0], counted["val"][0]  # standardised with the training part's statistics only
    assert np.allclose(x_train.mean(axis=0), 0, atol=1e-5) and not np.allclose(x_val.mean(axis=0), 0, atol=1e-3)
    assert sorted(SklearnDataset("wine", val_size=20).load()) == ["test_loader", "train_loader", "val_loader"]
    assert "val_loader" not in SklearnDataset("wine").load()


def test_text_validation_is_the_end_of_the_training_text():
    data = TextDataset(max_chars=4000, block_size=16, val_size=0.25)
    parts = data.named_parts()
    whole = TextDataset(max_chars=4000, block_size=16).named_parts()
    assert torch.equal(torch.cat([parts["train"], parts["val"]]), whole["train"])
    assert torch.equal(parts["test"], whole["test"])
    assert len(parts["val"]) == len(whole["train"]) - int(len(whole["train"]) * 0.75)
    assert len(data.load()["val_loader"].dataset) == len(data.windows(parts["val"])[0])


@pytest.mark.parametrize("size, problem", [(1.5, "val_size: expected a fraction of the training rows"),
                                           (0, "val_size: expected a fraction"),
                                           (400, "val_size=400 leaves")])
def test_bad_val_sizes_are_refused_naming_the_key(size, problem):
    with pytest.raises(ValueError, match=problem):  # the constructor checks the value, loading the sizes
        SklearnDataset("wine", val_size=size).load()


# ---------------------------------------------------------------- training in real processes


def train_wine(rank: int, world: int, out: str, n_epochs: int, patience: int, min_delta: float,
               display_step: int = 1, kill_at: int | None = None, resume: bool = False) -> dict:
    """Wine with a validation split on ``world`` ranks (the global batch 16 whatever ``world``), choosing on
    the validation loss, with checkpoints in ``out``; returns the record, every epoch's weights and the
    final ones. ``kill_at``: this process sends itself SIGTERM at that training forward (counted from 1);
    ``resume``: continue from the newest checkpoint in ``out``."""
    import os
    import signal

    from accelerate.state import AcceleratorState, GradientState
    from torch import nn

    from distlearn.models import MLP
    from distlearn.training import checkpoint
    from distlearn.training.learner import BackwardLearner

    AcceleratorState._reset_state(reset_partial_state=True)  # a fresh Accelerator in this (pool) process
    GradientState._reset_state()
    data = SklearnDataset("wine", **{**WINE, "batch_size": WINE["batch_size"] // world})
    torch.manual_seed(0)
    model = MLP(data.n_features, data.n_outputs, hidden_sizes=(16,))
    forwards = [0]

    def count(module, _inputs):
        forwards[0] += module.training
        if module.training and forwards[0] == kill_at:
            os.kill(os.getpid(), signal.SIGTERM)

    model.register_forward_pre_hook(count)
    learner = BackwardLearner(n_epochs=n_epochs, loss=nn.CrossEntropyLoss(), seed=0, display_every_n_steps=2,
                              optimizer_configs={"optimizer_class": "torch.optim.Adam",
                                                 "optimizer_parameters": {"lr": 0.05}})
    weights = {}

    def snapshot(epoch, _summary):
        weights[epoch] = {k: v.detach().clone() for k, v in learner.prepared_model.state_dict().items()}

    start = checkpoint.latest(out)[0] if resume else None
    checkpoints = checkpoint.Checkpoints(Path(out), every_n_steps=4, keep_last=100, resume_from=start)
    with checkpoints.catch_signals():
        try:
            record = learner.train(model, data.load(), disable_tqdm=True, display_step=display_step,
                                   on_epoch_end=snapshot, checkpoints=checkpoints,
                                   selection=Selection(keep_best=out, early_stopping=EarlyStopping(patience, min_delta)))
        except checkpoint.Interrupted as stopped:
            return {"interrupted": str(stopped.checkpoint)}
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"record": record, "weights": weights, "final": final}


def _best_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "best" / "model.safetensors"))


def _numbers(record: dict) -> dict:
    """The record without its clocks, as record.json holds it (floats exactly: JSON keeps their repr)."""
    return without_clocks(to_jsonable(record))


def _strip(state):  # DDP's "module." prefix
    return {k.removeprefix("module."): v for k, v in state.items()}


@pytest.fixture(scope="module")
def one_and_two(dist_pool, tmp_path_factory):
    """Patience 1: the validation loss rises in the 4th epoch (0-based 3); n_epochs 15."""
    runs = {}
    for world in (1, 2):
        out = tmp_path_factory.mktemp(f"wine{world}")
        runs[world] = (out, dist_pool.run(train_wine, world, str(out), 15, 1, 0.0))
    return runs


def test_keep_best_keeps_the_best_validation_epochs_weights_and_the_record_names_it(one_and_two):
    out, (result,) = one_and_two[1]
    record = result["record"]
    losses = [(e, r["val_result"]["val_loss"]) for e, r in record["training"].items()]
    best = min(losses, key=lambda p: p[1])
    assert (record["best_epoch"], record["best_score"], record["best_metric"]) == (best[0], best[1], "loss")
    assert record["stopped_early"] and record["stopped_epoch"] == len(losses) - 1 < 14
    assert record["best_epoch"] < record["stopped_epoch"]  # so the kept weights are not the last ones
    kept = _best_weights(out)
    for name, value in _strip(result["weights"][record["best_epoch"]]).items():
        assert torch.equal(kept[name], value), name
    assert not all(torch.equal(kept[k], v) for k, v in result["final"].items())
    assert json.loads((out / "best" / "best.json").read_text()) == {
        "epoch": record["best_epoch"], "score": record["best_score"], "metric": "loss"}
    assert not list(out.glob(".best*"))  # nothing staged is left


def test_two_processes_choose_and_stop_at_the_epoch_one_process_does(one_and_two):
    (_, (one,)), (out2, two) = one_and_two[1], one_and_two[2]
    assert _numbers(two[0]["record"]) == _numbers(two[1]["record"])  # every rank stopped together
    r1, r2 = one["record"], two[0]["record"]
    assert list(r1["training"]) == list(r2["training"])
    for key in ("best_epoch", "stopped_early", "stopped_epoch"):
        assert r1[key] == r2[key], key
    for epoch, summary in r1["training"].items():  # the reduction order differs: equal to rounding
        assert summary["val_result"]["val_loss"] == pytest.approx(r2["training"][epoch]["val_result"]["val_loss"],
                                                                  rel=1e-5)
    kept = _best_weights(out2)
    for name, value in _strip(two[0]["weights"][r2["best_epoch"]]).items():
        assert torch.equal(kept[name], value), name


def test_validation_every_few_epochs_counts_patience_in_evaluated_epochs(dist_pool, tmp_path):
    (result,) = dist_pool.run(train_wine, 1, str(tmp_path), 7, 1, 0.0, 2)
    record = result["record"]
    validated = [e for e, r in record["training"].items() if "val_result" in r]
    assert validated == [e for e in record["training"] if e % 2 == 0 or e == 6]
    assert record["best_epoch"] in validated and record["best_epoch"] == min(
        validated, key=lambda e: record["training"][e]["val_result"]["val_loss"])
    if record["stopped_early"]:
        assert record["stopped_epoch"] in validated


@pytest.mark.parametrize("where", ["mid-epoch", "epoch end"])
def test_a_killed_and_resumed_run_keeps_the_patience_and_stops_where_the_uninterrupted_one_did(
        dist_pool, tmp_path, where):
    """Patience 2, min_delta 0.002: the counter is 1 after epoch 5 (0-based) and the run stops after
    epoch 6. SIGTERM in epoch 6 (a mid-epoch checkpoint) or in epoch 5's last batch (the epoch-end
    checkpoint), then the same run resumed in its folder: it must stop after epoch 6 too, with the same
    record bitwise and the same best/ (a counter lost on resume runs on)."""
    from distlearn.training import checkpoint

    (full,) = dist_pool.run(train_wine, 1, str(tmp_path / "full"), 15, 2, 0.002)
    record, steps = full["record"], 7
    assert record["stopped_early"] and record["stopped_epoch"] == 6 and record["best_epoch"] == 4
    kill_at = 6 * steps + 1 if where == "mid-epoch" else 5 * steps + steps
    out = tmp_path / "killed"
    (killed,) = dist_pool.run(train_wine, 1, str(out), 15, 2, 0.002, 1, kill_at)
    marker = checkpoint.committed_marker(killed["interrupted"])
    assert marker["epoch"] == 6 and (marker["batches_done"] > 0) == (where == "mid-epoch")
    assert checkpoint.load_progress(killed["interrupted"], 0)["selection"]["waited"] == 1
    (resumed,) = dist_pool.run(train_wine, 1, str(out), 15, 2, 0.002, 1, None, True)
    assert _numbers(resumed["record"]) == _numbers(record)
    assert all(torch.equal(v, full["final"][k]) for k, v in resumed["final"].items())
    best, want = _best_weights(out), _best_weights(tmp_path / "full")
    assert best.keys() == want.keys() and all(torch.equal(v, want[k]) for k, v in best.items())


# ---------------------------------------------------------------- the rule, best/ and refusals


def test_patience_counts_no_improvement_by_more_than_min_delta_and_nan_never_wins():
    chooser = Chooser(Selection(early_stopping=EarlyStopping(2, 0.1)), "accuracy", True)
    seen = [chooser.observe(e, {"val_score": s}) for e, s in enumerate([0.5, 0.55, float("nan"), 0.7])]
    assert seen == [True, True, False, True]  # 0.55 is the best so far, yet not 0.1 better than 0.5
    assert chooser.state.stopped_epoch == 2 and chooser.stopped  # 0.55 and NaN: two without improvement
    assert (chooser.state.best_epoch, chooser.state.best_score) == (3, 0.7)
    tie = Chooser(Selection(), "loss", False)
    assert [tie.observe(e, {"val_loss": v}) for e, v in enumerate([1.0, 1.0, 0.5])] == [True, False, True]
    restored = Chooser(Selection(early_stopping=EarlyStopping(2, 0.1)), "accuracy", True)
    restored.load_state_dict(chooser.state_dict())
    assert restored.state == chooser.state


def test_best_is_replaced_whole_and_a_swap_a_kill_left_is_undone(tmp_path):
    write_best(tmp_path, {"w": torch.ones(2)}, 0, 1.0, "loss")
    write_best(tmp_path, {"w": torch.zeros(2)}, 3, 0.5, "loss")
    assert json.loads((tmp_path / "best" / "best.json").read_text())["epoch"] == 3
    (tmp_path / "best").rename(tmp_path / ".best-old")  # killed between the two renames
    (tmp_path / ".best-staging").mkdir()  # and a new one half-written
    assert recover_best(tmp_path) == "the previous best/ was put back"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert torch.equal(_best_weights(tmp_path)["w"], torch.zeros(2))
    recover_best(tmp_path, fresh=True)
    assert not (tmp_path / "best").exists()


def test_keep_best_and_early_stopping_without_a_validation_split_are_refused(fresh_accelerate):
    from torch import nn

    from distlearn.training.learner import BackwardLearner

    data = SklearnDataset("wine")
    learner = BackwardLearner(n_epochs=1, loss=nn.CrossEntropyLoss(), optimizer_configs={
        "optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lr": 0.1}})
    with pytest.raises(ValueError, match=r"no 'val_loader'.*data_configs\.data_parameters\.val_size"):
        learner.train(nn.Linear(13, 3), data.load(), selection=Selection(early_stopping=EarlyStopping(3)))
    with pytest.raises(ValueError, match="patience: expected an int >= 1"):
        EarlyStopping(0)
    with pytest.raises(ValueError, match="min_delta: expected a number >= 0"):
        EarlyStopping(2, -0.1)


@pytest.mark.parametrize("overrides, problem", [
    (["run.checkpoint.keep_best=true"], "run.checkpoint.keep_best: needs a validation split to choose on, but "
                                        "data_configs.data_parameters.val_size is not set"),
    (["run.early_stopping={patience: 2}"], "run.early_stopping: needs a validation split"),
    (["data_configs.data_parameters.val_size=0.1", "run.early_stopping={patience: 0, min_delta: x}"],
     "run.early_stopping.patience: expected an int >= 1 (evaluated epochs without improvement), got 0"),
    (["data_configs.data_parameters.val_size=0.1", "run.early_stopping={patience: 1, min_delta: x}"],
     "run.early_stopping.min_delta: expected a number >= 0, got 'x'"),
    (["run.display_step=0"], "run.display_step: expected an int >= 1"),
    (["run.checkpoint.keep_best=3"], "run.checkpoint.keep_best: expected true or false, got 3"),
])
def test_the_config_keys_are_checked_up_front(overrides, problem):
    from distlearn.experiment.config import ConfigError, load_config, validate_config

    with pytest.raises(ConfigError) as error:
        validate_config(load_config(None, overrides))
    assert problem in str(error.value)


def test_rerunning_an_early_stopped_run_says_it_is_complete_and_exits_0(tmp_path):
    from test_cli import distlearn, run_env
    from test_tracking import wandb_records

    env = run_env(WANDB_MODE="offline")
    env.pop("WANDB_DIR", None)  # the run's own folder: its W&B files are this test's
    args = ["wine", f"run.output_dir={tmp_path / 'run'}",
            "learner_configs.learner_parameters.n_epochs=40", "data_configs.data_parameters.val_size=0.3",
            "run.checkpoint.keep_best=true", "run.early_stopping={patience: 1}", "run.display_step=2"]
    first = distlearn(*args, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["stopped_early"] and record["stopped_epoch"] < 39, record.get("stopped_epoch")
    (file,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    summary = {item.key: json.loads(item.value_json) for r in wandb_records(file)
               if r.WhichOneof("record_type") == "summary" for item in r.summary.update}
    for key in ("best_epoch", "best_score", "best_metric", "stopped_early", "stopped_epoch"):
        assert summary[key] == record[key], key  # W&B's run summary says what the validation chose
    assert "stopped    early" in first.stdout and f"at epoch {record['best_epoch'] + 1}" in first.stdout
    assert "curves.png, best/" in first.stdout
    assert json.loads((tmp_path / "run" / "best" / "best.json").read_text())["epoch"] == record["best_epoch"]
    written = (tmp_path / "run" / "record.json").stat().st_mtime_ns
    again = distlearn(*args, "learner_configs.learner_parameters.n_epochs=50", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already complete" in again.stdout and "run.early_stopping stopped it" in again.stdout
    assert (tmp_path / "run" / "record.json").stat().st_mtime_ns == written


def test_reduce_lr_on_plateau_decides_on_the_validation_loss_where_there_is_one():
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    from distlearn.training.steps import step_scheduler_per_epoch

    class Wrapped:  # what Accelerate's AcceleratedScheduler shows of it
        def __init__(self):
            self.scheduler = ReduceLROnPlateau(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))
            self.seen = []

        def step(self, loss):
            self.seen.append(loss)

    scheduler = Wrapped()
    step_scheduler_per_epoch(scheduler, {"train_loss": 3.0, "test_result": {"test_loss": 2.0},
                                         "val_result": {"val_loss": 1.0}})
    step_scheduler_per_epoch(scheduler, {"train_loss": 3.0, "test_result": {"test_loss": 2.0}})
    assert scheduler.seen == [1.0, 2.0]


def test_a_checkpoint_from_before_these_keys_resumes_and_a_changed_patience_is_refused():
    from distlearn.command.resume import config_changes
    from distlearn.experiment.defaults import RUN_DEFAULTS

    old = {"run": {k: v for k, v in RUN_DEFAULTS.items() if k not in ("display_step", "early_stopping")}}
    old["run"]["checkpoint"] = {"every_n_steps": None, "keep_last": 2}
    new = {"run": dict(RUN_DEFAULTS)}
    assert config_changes(old, new) == ([], [])
    new["run"]["early_stopping"] = {"patience": 3}
    assert config_changes(old, new)[1] == [("run.early_stopping.patience", "<unset>", 3)]
