"""``transform(sample, generator)``: augmentations that replay on resume, on any number of processes and workers.

The model writes down every input row it is given, so a test sees the augmented samples
themselves. A control transform that draws from the global generator instead shows that the
comparisons would catch randomness that does not replay.
"""

from __future__ import annotations

import pytest
import torch

from conftest import reset_accelerate


class Points(torch.utils.data.Dataset):
    """22 points of 3 features in 2 classes."""

    n_features, n_classes = 3, 2

    def __init__(self, n: int = 22) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, generator=generator)
        self.y = torch.randint(0, 2, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        return self.x[index], self.y[index]


def jitter(sample, generator):
    """The augmentation under test: noise and a random sign, drawn from the sample's generator."""
    x, y = sample
    sign = torch.randint(0, 2, (), generator=generator) * 2 - 1
    return sign * x + 0.1 * torch.randn(x.shape, generator=generator), y


def jitter_global(sample, generator):
    """The control: the same augmentation from the global generator (what a plain ``__getitem__`` would do)."""
    x, y = sample
    return x + 0.1 * torch.randn(x.shape), y


class Recorder(torch.nn.Module):
    """A linear model with dropout (it draws from the global generator between two fetches)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.dropout = torch.nn.Dropout(0.2)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        if self.training:  # the training steps' inputs (the one FLOP count runs in eval mode)
            self.seen.append(x.detach().clone())
        return self.linear(self.dropout(x))


def train(rank, world, out_dir, resume_from=None, transform=jitter, workers=0):
    """2 epochs of TorchDataset(Points, transform) with checkpoints every 2 steps: (inputs seen, weights)."""
    from distlearn.data import TorchDataset
    from distlearn.training.checkpoint import Checkpoints
    from distlearn.training.learner import BackwardLearner

    reset_accelerate()
    torch.manual_seed(0)
    loaders = TorchDataset(Points, batch_size=6 // world, test_size=4, seed=3, transform=transform,
                           num_workers=workers).load()
    model = Recorder()
    learner = BackwardLearner(n_epochs=2, loss=torch.nn.CrossEntropyLoss(), seed=5,
                              optimizer_configs={"optimizer_class": "torch.optim.SGD",
                                                 "optimizer_parameters": {"lr": 0.1}})
    seen = {}

    def on_epoch_end(epoch, summary):
        seen[epoch] = torch.cat(model.seen)
        model.seen.clear()

    checkpoints = Checkpoints(out_dir, every_n_steps=2, keep_last=100, resume_from=resume_from)
    learner.train(model, {"train_loader": loaders["train_loader"]}, checkpoints=checkpoints, disable_tqdm=True,
                  on_epoch_end=on_epoch_end)
    weights = [p.detach().clone() for p in model.parameters()]
    reset_accelerate()
    return seen, weights


def _mid_epoch(out_dir):
    from distlearn.training.checkpoint import find

    return next(str(path) for path, meta in find(out_dir) if meta["batches_done"] and meta["epoch"] == 1)


def _resume_replays(rank, world, tmp, transform, workers=0, full_workers=None):
    """Whether the resumed run saw the uninterrupted run's inputs and ended with its weights, bitwise."""
    full_seen, full_weights = train(rank, world, f"{tmp}/full", None, transform,
                                    workers if full_workers is None else full_workers)
    seen, weights = train(rank, world, f"{tmp}/resumed", _mid_epoch(f"{tmp}/full"), transform, workers)
    tail = seen[1]  # the resumed epoch: its batches after the checkpoint
    same_inputs = torch.equal(full_seen[1][-len(tail):], tail)
    return same_inputs and all(torch.equal(a, b) for a, b in zip(full_weights, weights))


@pytest.mark.parametrize("world", [1, 2])
def test_augmentations_replay_exactly_on_resume(dist_pool, tmp_path, world):
    assert all(dist_pool.run(_resume_replays, world, str(tmp_path / "hook"), jitter))
    # the control: the global generator's draws are not those of the uninterrupted run
    assert not all(dist_pool.run(_resume_replays, world, str(tmp_path / "global"), jitter_global))


def _augmented_rows(runs):
    """Each epoch's augmented rows over all ranks, in a fixed order (the ranks' shares interleave otherwise)."""
    out = {}
    for epoch in runs[0][0]:
        rows = torch.cat([seen[epoch] for seen, _ in runs])
        out[epoch] = rows[torch.argsort(rows[:, 0] * 1e4 + rows[:, 1])]
    return out


def test_augmentations_are_the_same_on_one_and_two_processes(dist_pool, tmp_path):
    one = _augmented_rows(dist_pool.run(train, 1, str(tmp_path / "one")))
    two = _augmented_rows(dist_pool.run(train, 2, str(tmp_path / "two")))
    for epoch in one:  # 18 training samples, 3 global batches of 6: no repeats on 2 processes
        assert one[epoch].shape == (18, 3) and torch.equal(one[epoch], two[epoch])
    assert not torch.equal(one[0], one[1])  # each epoch draws its own augmentations
    global_one = _augmented_rows(dist_pool.run(train, 1, str(tmp_path / "g1"), None, jitter_global))
    global_two = _augmented_rows(dist_pool.run(train, 2, str(tmp_path / "g2"), None, jitter_global))
    assert not torch.equal(global_one[0], global_two[0])


def test_workers_give_the_batches_of_no_workers_and_resume_exactly(tmp_path, fresh_accelerate):
    """In this process: the pool's processes are daemons, which may not start dataloader workers."""
    none_seen, none_weights = train(0, 1, str(tmp_path / "none"), workers=0)
    two_seen, two_weights = train(0, 1, str(tmp_path / "two"), workers=2)
    assert all(torch.equal(none_seen[e], two_seen[e]) for e in none_seen)
    assert all(torch.equal(a, b) for a, b in zip(none_weights, two_weights))
    # resumed with 2 workers from a run without: the same inputs and weights, bitwise
    assert _resume_replays(0, 1, str(tmp_path / "resume"), jitter, workers=2, full_workers=0)


class Draws(Points):
    """Draws from the global generator in ``__getitem__``: what a worker's seed decides."""

    def __getitem__(self, index: int):
        x, y = super().__getitem__(index)
        return x + torch.rand(()), y


def test_worker_seeds_follow_seed_and_epoch_not_the_global_generator(fresh_accelerate):
    from distlearn.runtime.accelerator import build_accelerator, prepare_loader

    accelerator = build_accelerator(seed=4)
    loader = prepare_loader(accelerator, torch.utils.data.DataLoader(Draws(), batch_size=4, num_workers=2))

    def epoch(e, global_seed):
        torch.manual_seed(global_seed)  # the state a resumed epoch starts its iterator in differs
        loader.set_epoch(e)
        return torch.cat([x for x, _ in loader])

    assert torch.equal(epoch(1, 0), epoch(1, 123))
    assert not torch.equal(epoch(1, 0), epoch(2, 0))


def test_the_seed_derivation_is_stable():
    """The documented rule (README, distlearn.runtime.randomness): users may rely on these numbers."""
    import hashlib

    from distlearn.runtime.randomness import sample_generator, seed_of

    expected = int.from_bytes(hashlib.sha256(b"distlearn-sample:3:1:7").digest()[:8], "little") >> 1
    assert seed_of(3, 1, 7) == expected
    assert torch.equal(torch.rand(4, generator=sample_generator(3, 1, 7)),
                       torch.rand(4, generator=torch.Generator().manual_seed(expected)))
    assert len({seed_of(3, e, i) for e in range(3) for i in range(100)}) == 300


@pytest.mark.parametrize("params, key", [
    ({"transform": "no.such.module.fn"}, "transform"),
    ({"transform": "math.pi"}, "transform"),
    ({"num_workers": -1}, "num_workers"),
    ({"num_workers": 1.5}, "num_workers"),
])
def test_bad_transform_and_workers_are_refused_naming_the_key(params, key):
    from distlearn.data import HFDataset, TorchDataset

    for cls, base in ((TorchDataset, {"dataset_class": Points}), (HFDataset, {"data_files": __file__})):
        with pytest.raises(ValueError, match=f"{cls.__name__}: {key}: "):
            cls(**base, **params)


def test_augmentations_replay_on_a_resume_with_another_number_of_processes(dist_pool, tmp_path):
    """Saved by 2 processes, resumed on 1: the rest of the epoch is the same augmented samples."""
    from distlearn.training.checkpoint import committed_marker

    full = dist_pool.run(train, 2, str(tmp_path / "full"))
    path = _mid_epoch(tmp_path / "full")
    done = committed_marker(path)["batches_done"]
    resumed = dist_pool.run(train, 1, str(tmp_path / "resumed"), path)
    rest = torch.cat([seen[1][done * 3:] for seen, _ in full])  # each rank's rows after its first `done` batches
    order = lambda rows: rows[torch.argsort(rows[:, 0] * 1e4 + rows[:, 1])]  # noqa: E731
    assert torch.equal(order(rest), order(resumed[0][0][1]))


def shift_x(sample, generator):
    """An HFDataset transform: samples are dicts of tensors."""
    return {**sample, "x": sample["x"] + torch.rand((), generator=generator)}


def test_hf_dataset_applies_the_transform_per_sample_epoch_and_index(tmp_path):
    pytest.importorskip("datasets")
    from distlearn.data import HFDataset

    table = tmp_path / "rows.csv"
    table.write_text("x,label\n" + "".join(f"{i}.0,{i % 2}\n" for i in range(10)))

    def epoch_rows(epoch):
        data = HFDataset(str(table), test_size=2, batch_size=4, seed=1, transform="test_transforms.shift_x")
        train = data.load()["train_loader"].dataset
        train.set_epoch(epoch)
        return torch.stack([train[i]["x"] for i in range(len(train))])

    first, again, later = epoch_rows(0), epoch_rows(0), epoch_rows(1)
    plain = torch.stack([row["x"] for row in HFDataset(str(table), test_size=2, seed=1).splits()[0]])
    assert torch.equal(first, again) and not torch.equal(first, later)
    assert ((first - plain) > 0).all() and ((first - plain) < 1).all()
