"""Issue 19's loose ends: persistent workers follow the epoch, the shared-folder probe in the learner,
the throughput timer's events folded, ``best/`` seeded at a resume, non-scalar selection metrics refused."""

from __future__ import annotations

import pytest
import torch

from conftest import reset_accelerate
from test_transforms import Draws, Points, Recorder, jitter


# --- 1. persistent dataloader workers follow the epoch ------------------------------------------------------------

def _train_points(out_dir, n_epochs=3, resume_from=None, **data):
    """``n_epochs`` of TorchDataset(Points, jitter) on one process, checkpoints every 2 steps: (inputs seen, weights)."""
    from distlearn.data import TorchDataset
    from distlearn.training.checkpoint import Checkpoints
    from distlearn.training.learner import BackwardLearner

    reset_accelerate()
    torch.manual_seed(0)
    loaders = TorchDataset(Points, batch_size=6, test_size=4, seed=3, transform=jitter, **data).load()
    model = Recorder()
    learner = BackwardLearner(n_epochs=n_epochs, loss=torch.nn.CrossEntropyLoss(), seed=5,
                              optimizer_configs={"optimizer_class": "torch.optim.SGD",
                                                 "optimizer_parameters": {"lr": 0.1}})
    seen = {}

    def on_epoch_end(epoch, summary):
        seen[epoch] = torch.cat(model.seen)
        model.seen.clear()

    checkpoints = Checkpoints(out_dir, every_n_steps=2, keep_last=100, resume_from=resume_from)
    learner.train(model, {"train_loader": loaders["train_loader"]}, checkpoints=checkpoints, disable_tqdm=True,
                  on_epoch_end=on_epoch_end)
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
    kept = _epochs(loader(num_workers=1, persistent_workers=True, multiprocessing_context="spawn"), [0, 1, 2])
    assert all(torch.equal(a, b) for a, b in zip(plain, kept))


def test_persistent_workers_reseed_their_generators_each_epoch(fresh_accelerate):
    """A data set drawing from the global generator: persistent workers draw what fresh workers draw each epoch
    (before, they went on with epoch 0's stream)."""
    from distlearn.runtime.accelerator import build_accelerator, prepare_loader

    accelerator = build_accelerator(seed=4)

    def loader(**workers):
        return prepare_loader(accelerator, torch.utils.data.DataLoader(Draws(10), batch_size=2, num_workers=2,
                                                                       **workers))

    fresh, kept = _epochs(loader(), [0, 1, 2]), _epochs(loader(persistent_workers=True), [0, 1, 2])
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
