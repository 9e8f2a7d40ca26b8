"""Issue 19's loose ends: persistent workers follow the epoch, the shared-folder probe in the learner,
the throughput timer's events folded, ``best/`` seeded at a resume, non-scalar selection metrics refused."""

from __future__ import annotations

import pytest
import torch

from conftest import reset_accelerate
from test_transforms import Draws, Points, Recorder, jitter


# --- 1. persistent dataloader workers follow the epoch ------------------------------------------------------------

def _learner(n_epochs, optimizer="torch.optim.SGD", lr=0.1, **options):
    """A BackwardLearner with cross-entropy and ``optimizer`` at ``lr``."""
    from distlearn.training.learner import BackwardLearner

    return BackwardLearner(n_epochs=n_epochs, loss=torch.nn.CrossEntropyLoss(), **options,
                           optimizer_configs={"optimizer_class": optimizer, "optimizer_parameters": {"lr": lr}})


def _train_points(out_dir, n_epochs=3, resume_from=None, **data):
    """``n_epochs`` of TorchDataset(Points, jitter) on one process, checkpoints every 2 steps: (inputs seen, weights)."""
    from distlearn.data import TorchDataset
    from distlearn.training.checkpoint import Checkpoints

    reset_accelerate()
    torch.manual_seed(0)
    train = TorchDataset(Points, batch_size=6, test_size=4, seed=3, transform=jitter, **data).load()["train_loader"]
    model, seen = Recorder(), {}

    def inputs_seen(epoch, _summary):
        seen[epoch] = torch.cat(model.seen)
        model.seen.clear()

    learner = _learner(n_epochs, seed=5)
    learner.train(model, train, checkpoints=Checkpoints(out_dir, every_n_steps=2, keep_last=100, resume_from=resume_from),
                  disable_tqdm=True, on_epoch_end=inputs_seen)
    for prepared in list(learner._prepared_loaders.values()):  # persistent workers: stopped now (a later garbage
        workers = getattr(prepared, "_iterator", None)             # collection stops each in 5 s)
        if workers is not None:
            workers._shutdown_workers()
    reset_accelerate()
    return seen, [p.detach().clone() for p in model.parameters()]


def test_persistent_workers_give_the_batches_of_no_workers_over_epochs_and_a_resume(tmp_path, fresh_accelerate):
    """In this process (the pool's ranks are daemons, which may not start workers). Before the shared epoch,
    persistent workers drew epoch 0's augmentations again in epochs 1 and 2."""
    from distlearn.training.checkpoint import find

    none_seen, none_weights = _train_points(str(tmp_path / "none"))
    kept_seen, kept_weights = _train_points(str(tmp_path / "kept"), num_workers=2, persistent_workers=True)
    assert not torch.equal(none_seen[0], none_seen[1])  # the epochs draw differently, so staleness shows
    assert all(torch.equal(none_seen[e], kept_seen[e]) for e in range(3))
    assert all(torch.equal(a, b) for a, b in zip(none_weights, kept_weights))
    # resumed in epoch 0 with persistent workers: they live on through epochs 1 and 2
    mid = next(str(p) for p, meta in find(tmp_path / "none") if meta["epoch"] == 0 and meta["batches_done"])
    seen, weights = _train_points(str(tmp_path / "resumed"), resume_from=mid, num_workers=2, persistent_workers=True)
    assert torch.equal(seen[1], none_seen[1]) and torch.equal(seen[2], none_seen[2])
    assert all(torch.equal(a, b) for a, b in zip(none_weights, weights))


def _epochs(loader, epochs):
    out = []
    for epoch in epochs:
        torch.manual_seed(epoch + 100)  # the training process's global state must not matter
        loader.set_epoch(epoch)
        out.append(torch.cat([x for x, _ in loader]))
    return out


def test_persistent_workers_see_the_epoch_under_spawn(fresh_accelerate):
    """A transformed data set read by one persistent spawned worker (the data set pickled, not inherited as
    under fork, which the test above uses): each epoch's rows are those of no workers."""
    from distlearn.data.randomness import Transformed
    from distlearn.runtime.accelerator import build_accelerator, prepare_loader

    accelerator = build_accelerator(seed=4)
    data = Transformed(Points(8), jitter, seed=3)

    def loader(**workers):
        return prepare_loader(accelerator, torch.utils.data.DataLoader(data, batch_size=4, **workers))

    plain = _epochs(loader(), [0, 1, 2])
    persistent = loader(num_workers=1, persistent_workers=True, multiprocessing_context="spawn")
    kept = _epochs(persistent, [0, 1, 2])
    persistent._iterator._shutdown_workers()  # now, not in a later garbage collection (5 s a worker)
    assert all(torch.equal(a, b) for a, b in zip(plain, kept))


def test_persistent_workers_reseed_their_generators_each_epoch(fresh_accelerate):
    """A data set drawing from the global generator: persistent workers draw what fresh workers draw each epoch
    (before, they went on with epoch 0's stream)."""
    from distlearn.runtime.accelerator import build_accelerator, prepare_loader

    accelerator = build_accelerator(seed=4)

    def loader(**workers):
        return prepare_loader(accelerator, torch.utils.data.DataLoader(Draws(10), batch_size=2, num_workers=2,
                                                                       **workers))

    persistent = loader(persistent_workers=True)
    fresh, kept = _epochs(loader(), [0, 1, 2]), _epochs(persistent, [0, 1, 2])
    persistent._iterator._shutdown_workers()  # now, not in a later garbage collection (5 s a worker)
    assert all(torch.equal(a, b) for a, b in zip(fresh, kept))
    assert not torch.equal(fresh[1], fresh[2])


@pytest.mark.parametrize("params, received", [
    ({"persistent_workers": "yes"}, "'yes'"),
    ({"persistent_workers": True}, "true with num_workers 0"),
    ({"persistent_workers": True, "num_workers": 0}, "true with num_workers 0"),
])
def test_bad_persistent_workers_are_refused_naming_the_key(params, received):
    from distlearn.data import HFDataset, TorchDataset

    for cls, base in ((TorchDataset, {"dataset_class": Points}), (HFDataset, {"data_files": __file__})):
        with pytest.raises(ValueError, match=f"{cls.__name__}: persistent_workers: expected .*got {received}"):
            cls(**base, **params)


# --- 2. the learner probes the checkpoint folder (Python API) -----------------------------------------------------

def _train_in(rank, world, folders):
    """Each rank trains from its own working directory with ``Checkpoints("run")``: (error, files left, epochs)."""
    import os
    from pathlib import Path

    from distlearn.training.checkpoint import Checkpoints
    from distlearn.training.shared_folder import FolderNotShared

    here = os.getcwd()
    os.chdir(folders[rank])
    reset_accelerate()
    try:
        data = torch.utils.data.TensorDataset(torch.randn(8, 3), torch.randint(0, 2, (8,)))
        learner = _learner(1)
        epochs = []
        try:
            learner.train(torch.nn.Linear(3, 2), torch.utils.data.DataLoader(data, batch_size=2),
                          checkpoints=Checkpoints("run", every_n_steps=1), disable_tqdm=True,
                          on_epoch_end=lambda epoch, summary: epochs.append(epoch))
            error = None
        except FolderNotShared as exc:
            error = str(exc)
        left = sorted(str(p.relative_to(folders[rank])) for p in Path(folders[rank]).rglob("*"))
        return error, left, epochs
    finally:
        reset_accelerate()
        os.chdir(here)


def test_the_learner_refuses_a_checkpoint_folder_not_every_rank_sees(dist_pool, tmp_path):
    """Ranks in different working directories with a relative folder: what nodes without a shared file system
    look like here. Before, rank 1's checkpoints went to its own folder and rank 0 committed a checkpoint
    that held rank 0's files only."""
    import socket

    folders = [tmp_path / "a", tmp_path / "b"]
    for folder in folders:
        folder.mkdir()
    (main_error, main_left, main_epochs), (other_error, other_left, other_epochs) = \
        dist_pool.run(_train_in, 2, [str(f) for f in folders])
    assert main_error == other_error is not None and main_epochs == other_epochs == []
    host = socket.gethostname()
    assert f"rank 1 on host {host} (folder {folders[1] / 'run'})" in main_error
    assert f"rank 0 on host {host} wrote a probe file into {folders[0] / 'run'}/checkpoints" in main_error
    assert "give Checkpoints an output_dir on a file system shared by every node" in main_error
    assert main_left == ["run", "run/checkpoints"] and other_left == []  # the probe removed, nothing saved
    # one working directory: the same code trains, and leaves no probe among its checkpoints
    shared = [str(tmp_path / "a")] * 2
    (error, left, epochs), _ = dist_pool.run(_train_in, 2, shared)
    assert error is None and epochs == [0] and not any(".distlearn-probe-" in name for name in left)


# --- 3. the throughput timer's CUDA events are read as the device finishes them -----------------------------------

class _Device:
    """A stand-in for a CUDA stream (no GPU here): events finish ``lag`` steps after they are recorded, in order."""

    def __init__(self, lag: int) -> None:
        self.recorded, self.finished, self.lag, self.waits = 0, 0, lag, 0

    def step(self) -> None:
        self.finished = max(self.finished, self.recorded - 2 * self.lag)


class _Event:
    """``torch.cuda.Event``'s four calls the timer makes, on :class:`_Device`'s clock (milliseconds vary per step)."""

    def __init__(self, device: _Device) -> None:
        self.device, self.at = device, None

    def record(self) -> None:
        self.device.recorded += 1
        self.at = self.device.recorded
        self.device.step()

    def query(self) -> bool:
        return self.at <= self.device.finished

    def synchronize(self) -> None:
        self.device.waits += 1
        self.device.finished = self.device.recorded

    def elapsed_time(self, end: _Event) -> float:
        assert end.query(), "elapsed_time before the end event finished raises on CUDA"
        return 0.1 + (self.at % 7) * 0.013 + (end.at - self.at) * 1e-3


@pytest.mark.parametrize("lag", [0, 3, 100])
def test_the_timer_holds_a_bounded_number_of_events_and_the_same_seconds(lag):
    """Before, every step's pair stayed until the epoch's end (here 1000 pairs); the seconds are bitwise those
    of reading all pairs at the end, and nothing waits for the device before then."""
    from distlearn.training.throughput import FOLD_EVERY, EpochTimer

    device = _Device(lag)
    timer = EpochTimer(torch.device("cpu"))
    made = []
    timer._events, timer._event = [], lambda: made.append(_Event(device)) or made[-1]  # on this clock
    held = []
    for _ in range(1000):
        with timer.timing("steps"):
            pass
        held.append(len(timer._events))
    assert device.waits == 0 and max(held) <= FOLD_EVERY + lag
    timer.fold()
    assert device.waits == 1 and timer._events == []  # the epoch's one wait
    assert timer.device_steps == sum(a.elapsed_time(b) for a, b in zip(made[::2], made[1::2])) / 1000.0


# --- 4. keep_best turned on at a resume ---------------------------------------------------------------------------

def _wine(rank, world, out, n_epochs, keep_best=None, resume_from=None):
    """Wine with a validation split, one checkpoint per epoch end in ``out``: (record, each epoch's weights)."""
    from distlearn.data import SklearnDataset
    from distlearn.models import MLP
    from distlearn.training.checkpoint import Checkpoints
    from distlearn.training.selection import Selection

    reset_accelerate()
    data = SklearnDataset("wine", batch_size=16, val_size=30, seed=0)
    torch.manual_seed(0)
    model = MLP(data.n_features, data.n_outputs, hidden_sizes=(16,))
    learner = _learner(n_epochs, "torch.optim.Adam", 0.05, seed=0)
    weights = {}

    def snapshot(epoch, _summary):
        weights[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    record = learner.train(model, data.load(), disable_tqdm=True, on_epoch_end=snapshot,
                           checkpoints=Checkpoints(out, keep_last=100, resume_from=resume_from),
                           selection=Selection(keep_best=keep_best))
    reset_accelerate()
    return record, weights


def test_keep_best_turned_on_at_a_resume_starts_from_the_best_epochs_weights(dist_pool, tmp_path):
    """Resumed from the end of the best epoch so far, best/ holds its weights at once (before, best/ stayed empty
    until a later epoch improved, here never); resumed from a later epoch's end, best/ waits for an improvement."""
    import json

    from safetensors.torch import load_file

    from distlearn.training.checkpoint import find

    ((record, weights),) = dist_pool.run(_wine, 1, str(tmp_path / "plain"), 7)
    best = record["best_epoch"]
    assert best == 4 and all(record["training"][e]["val_result"]["val_loss"] > record["best_score"] for e in (5, 6))
    at_end = {meta["epoch"]: str(path) for path, meta in find(tmp_path / "plain") if not meta["batches_done"]}
    dist_pool.run(_wine, 1, str(tmp_path / "resumed"), 7, str(tmp_path / "kept"), at_end[best + 1])
    kept = load_file(str(tmp_path / "kept" / "best" / "model.safetensors"))
    assert kept.keys() == weights[best].keys() and all(torch.equal(kept[k], v) for k, v in weights[best].items())
    assert json.loads((tmp_path / "kept" / "best" / "best.json").read_text()) == {
        "epoch": best, "score": record["best_score"], "metric": "loss"}
    dist_pool.run(_wine, 1, str(tmp_path / "later"), 7, str(tmp_path / "late"), at_end[best + 2])
    assert not (tmp_path / "late" / "best").exists()


# --- 5. a selection metric that is not one number is refused ------------------------------------------------------

@pytest.mark.parametrize("metrics, choose, problem", [
    ({"metric_class": "distlearn.metrics.ConfusionMatrix"}, "run.checkpoint.keep_best=true",
     "metric_configs.metric_class: run.checkpoint.keep_best: keep_best and early_stopping choose an epoch on the "
     "primary metric's value: expected a metric of one number, got distlearn.metrics.ConfusionMatrix, which never"),
    ([{"metric_class": "distlearn.metrics.F1", "metric_parameters": {"average": "none", "num_labels": 3}},
      {"metric_class": "distlearn.metrics.Accuracy"}], "run.early_stopping={patience: 2}",
     "metric_configs[0].metric_class: run.early_stopping: keep_best and early_stopping choose an epoch on the primary "
     "metric's value: expected a metric of one number, got distlearn.metrics.F1 with average 'none', which never"),
])
def test_the_config_refuses_a_selection_metric_that_is_not_one_number(metrics, choose, problem):
    from distlearn.experiment.config import ConfigError, load_config, validate_config

    def config(*overrides):
        cfg = load_config("wine", ["data_configs.data_parameters.val_size=0.2", *overrides])
        cfg.metric_configs = metrics
        return cfg

    with pytest.raises(ConfigError) as error:
        validate_config(config(choose))
    assert problem in str(error.value)
    validate_config(config())  # without keep_best and early stopping, the same metric is fine


def test_the_learner_refuses_a_selection_metric_that_is_not_one_number(fresh_accelerate, tmp_path):
    """Before, a confusion matrix as the selection metric never improved: best/ stayed empty and early stopping
    stopped after ``patience`` epochs whatever the model learned."""
    from distlearn.data import SklearnDataset
    from distlearn.metrics import Accuracy, ConfusionMatrix, Metrics
    from distlearn.training.selection import EarlyStopping, Selection

    data = SklearnDataset("wine", batch_size=16, val_size=30).load()
    learner = _learner(1)
    model = torch.nn.Linear(13, 3)
    for metric, got in ((ConfusionMatrix(3), "the primary metric 'confusion_matrix' (ConfusionMatrix)"),
                        (Metrics({"cm": ConfusionMatrix(3), "acc": Accuracy()}), "'cm' (ConfusionMatrix)"),
                        (Accuracy(average="none", num_labels=3), "(Accuracy)")):
        for selection in (Selection(keep_best=tmp_path), Selection(early_stopping=EarlyStopping(2))):
            with pytest.raises(ValueError, match=r"expected a metric of one number, got .*" + f"{got}".replace(
                    "(", r"\(").replace(")", r"\)")):
                learner.train(model, data, metric=metric, selection=selection, disable_tqdm=True)
    assert not (tmp_path / "best").exists()
    # a scalar primary in the same collection chooses as usual
    record = learner.train(model, data, metric=Metrics({"cm": ConfusionMatrix(3), "acc": Accuracy()}, primary="acc"),
                           selection=Selection(keep_best=tmp_path), disable_tqdm=True)
    assert record["best_metric"] == "acc" and (tmp_path / "best" / "model.safetensors").exists()


class _Pair:
    """A metric of the user's whose value is two numbers, and says nothing about it."""

    name, higher_is_better = "pair", True


def test_a_users_metric_of_several_numbers_is_refused_where_it_would_choose():
    from distlearn.training.selection import Chooser, EarlyStopping, Selection

    chooser = Chooser(Selection(early_stopping=EarlyStopping(2)), "pair", True)
    with pytest.raises(ValueError, match="got 'pair', a value of 2 numbers"):
        chooser.observe(0, {"val_score": torch.tensor([0.5, 0.7])})
    assert Chooser(Selection(), "pair", True).observe(0, {"val_score": torch.tensor([0.5, 0.7])}) is False
    assert chooser.observe(0, {"val_score": torch.tensor(0.5)}) is True
