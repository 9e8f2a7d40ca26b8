"""A mid-epoch resume skips the batches already trained on without fetching their samples.

Each run trains on a data set that writes down every index it is asked for (``__getitem__`` or
``__getitems__``). The uninterrupted run saves a checkpoint every few steps; the resumed run starts
from one in the middle of an epoch. The resumed epoch must fetch exactly the samples of the
uninterrupted epoch's remaining batches (the even-batches repeats at its end included) and none of
the skipped ones, and end bitwise equal, on 1 and 2 processes; on another number of processes the
global batch is kept and the samples fetched are still only the ones not yet trained on.
"""

from __future__ import annotations

import logging
from collections import Counter

import pytest
import torch

from conftest import reset_accelerate

PER_PROCESS = 3


class Counted(torch.utils.data.Dataset):
    """A small classification set that logs each index fetched; ``batched`` adds ``__getitems__``."""

    def __init__(self, n: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, generator=generator)
        self.y = torch.randint(0, 2, (n,), generator=generator)
        self.fetched: list[int] = []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        self.fetched.append(int(index))
        return self.x[index], self.y[index]


class CountedBatches(Counted):
    def __getitems__(self, indices):
        self.fetched.extend(int(i) for i in indices)
        return [(self.x[i], self.y[i]) for i in indices]


class Stream(torch.utils.data.IterableDataset):
    """An iterable set: the same order on every rank (what Accelerate's dispatcher expects)."""

    def __init__(self, n: int) -> None:
        self.data = Counted(n)

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self):
        for i in range(len(self.data)):
            yield self.data[i]


class StatefulStream(Stream):
    """An iterable set with ``state_dict``/``load_state_dict``, torchdata's ``StatefulDataLoader`` convention."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.position, self.start = 0, 0

    def __iter__(self):
        start, self.start = self.start, 0
        for i in range(start, len(self.data)):
            self.position = i + 1  # the state after the latest sample yielded
            yield self.data[i]

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.start = state["position"]


def train(rank, world, n, out_dir, resume_from=None, kind="map", per_process=PER_PROCESS, every=3, workers=0):
    """Train 2 epochs with a checkpoint every ``every`` steps; (fetched indices per epoch, weights, record)."""
    from distlearn.training.checkpoint import Checkpoints
    from distlearn.training.learner import BackwardLearner

    reset_accelerate()
    torch.manual_seed(0)
    data = {"map": Counted, "batched": CountedBatches, "iterable": Stream, "stateful": StatefulStream}[kind](n)
    counted = data.data if isinstance(data, Stream) else data
    shuffle = not isinstance(data, Stream)
    loader = torch.utils.data.DataLoader(data, batch_size=per_process, shuffle=shuffle, num_workers=workers,
                                         generator=torch.Generator().manual_seed(1) if shuffle else None)
    model = torch.nn.Linear(3, 2)
    learner = BackwardLearner(n_epochs=2, loss=torch.nn.CrossEntropyLoss(), seed=5,
                              optimizer_configs={"optimizer_class": "torch.optim.SGD",
                                                 "optimizer_parameters": {"lr": 0.1}})
    fetched = {}

    def on_epoch_end(epoch, summary):
        fetched[epoch] = list(counted.fetched)
        counted.fetched.clear()

    checkpoints = Checkpoints(out_dir, every_n_steps=every, keep_last=100, resume_from=resume_from)
    record = learner.train(model, {"train_loader": loader}, checkpoints=checkpoints, disable_tqdm=True,
                           on_epoch_end=on_epoch_end)
    weights = [p.detach().clone() for p in model.parameters()]
    reset_accelerate()
    return fetched, weights, {e: (s["train_loss"], s["samples"]) for e, s in record["training"].items()}


def _mid_epoch(out_dir, epoch=None):
    """The newest checkpoint in the middle of an epoch (of ``epoch`` when given), and its marker."""
    from distlearn.training.checkpoint import find

    for path, meta in find(out_dir):
        if meta["batches_done"] and (epoch is None or meta["epoch"] == epoch):
            return str(path), meta
    raise AssertionError(f"no mid-epoch checkpoint in {out_dir}")


@pytest.mark.parametrize("world, kind", [(1, "map"), (2, "map"), (2, "batched")])
def test_a_resume_fetches_no_skipped_sample_and_ends_bitwise_equal(dist_pool, tmp_path, world, kind):
    n = 23  # on 2 processes the last global batch repeats one sample from the epoch's start
    full = dist_pool.run(train, world, n, str(tmp_path / "full"), None, kind)
    path, meta = _mid_epoch(tmp_path / "full", epoch=1)
    resumed = dist_pool.run(train, world, n, str(tmp_path / "resumed"), path, kind)
    done = meta["batches_done"]
    assert done >= 1
    for rank in range(world):
        (f_fetched, f_weights, f_record), (r_fetched, r_weights, r_record) = full[rank], resumed[rank]
        assert list(r_fetched) == [1]
        # exactly the remaining batches' samples, in order: none of the first `done` batches was fetched
        assert r_fetched[1] == f_fetched[1][done * PER_PROCESS:]
        assert all(torch.equal(a, b) for a, b in zip(f_weights, r_weights))
        assert r_record[1] == f_record[1]


def test_a_resume_on_another_number_of_processes_fetches_only_the_samples_not_trained_on(dist_pool, tmp_path):
    n = 24  # 4 global batches of 6 an epoch on 1, 2 or 3 processes: no repeated samples
    full = dist_pool.run(train, 2, n, str(tmp_path / "full"), None, "map")
    path, meta = _mid_epoch(tmp_path / "full", epoch=1)
    done = meta["batches_done"]
    resumed = dist_pool.run(train, 1, n, str(tmp_path / "resumed"), path, "map")  # per-process batch 3 -> 6
    trained_before = Counter(i for fetched, _, _ in full for i in fetched[1][:done * PER_PROCESS])
    remaining = Counter(i for fetched, _, _ in full for i in fetched[1][done * PER_PROCESS:])
    got = Counter(resumed[0][0][1])
    assert got == remaining and not (got & trained_before)
    assert resumed[0][2][1][1] == full[0][2][1][1] == n  # the epoch's samples
    assert resumed[0][2][1][0] == pytest.approx(full[0][2][1][0], rel=1e-6)
    for a, b in zip(full[0][1], resumed[0][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def _iterable_resume(rank, world, n, full_dir, resumed_dir):
    """The uninterrupted and resumed runs of an iterable set; the resume's warnings on this rank."""
    full = train(rank, world, n, full_dir, None, "iterable")
    path, _ = _mid_epoch(full_dir, epoch=1)
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("distlearn")
    logger.addHandler(handler)
    try:
        resumed = train(rank, world, n, resumed_dir, path, "iterable")
    finally:
        logger.removeHandler(handler)
    return full, resumed, records


def test_an_iterable_data_set_is_read_and_dropped_with_a_warning_naming_the_cost(dist_pool, tmp_path):
    n = 24
    out = dist_pool.run(_iterable_resume, 1, n, str(tmp_path / "full"), str(tmp_path / "resumed"))
    full, resumed, warnings = out[0]
    path, meta = _mid_epoch(tmp_path / "full", epoch=1)
    done = meta["batches_done"]
    assert all(torch.equal(a, b) for a, b in zip(full[1], resumed[1]))
    assert resumed[0][1] == full[0][1]  # the whole epoch read again: the skipped batches too
    cost = [w for w in warnings if "read again and dropped" in w]
    assert len(cost) == 1 and f"the {done} batches already trained on ({done * PER_PROCESS} samples" in cost[0]
    assert "iterable" in cost[0]


@pytest.mark.parametrize("world", [1, 2])
def test_a_stateful_iterable_set_resumes_from_its_saved_state_without_reading_the_skipped_part(
        dist_pool, tmp_path, world):
    n = 24  # the main process reads every batch (Accelerate dispatches iterable sets): 4 steps of 3 * world
    full = dist_pool.run(train, world, n, str(tmp_path / "full"), None, "stateful")
    path, meta = _mid_epoch(tmp_path / "full", epoch=1)
    resumed = dist_pool.run(train, world, n, str(tmp_path / "resumed"), path, "stateful")
    done = meta["batches_done"]
    assert full[0][0][1] == list(range(n))
    assert resumed[0][0][1] == list(range(done * PER_PROCESS * world, n))
    for rank in range(world):
        assert all(torch.equal(a, b) for a, b in zip(full[rank][1], resumed[rank][1]))
        assert resumed[rank][2][1] == full[rank][2][1]


def test_a_hugging_face_iterable_dataset_resumes_from_its_state(fresh_accelerate):
    """``datasets.IterableDataset``'s own state_dict, through the prepared loader as the learner uses it."""
    datasets = pytest.importorskip("datasets")
    from distlearn.runtime.accelerator import build_accelerator, prepare_loader
    from distlearn.runtime.skipping import batches_after, data_position

    rows = datasets.Dataset.from_dict({"x": list(range(20)), "y": [i % 3 for i in range(20)]})
    accelerator = build_accelerator(seed=0)

    def loader():
        stream = rows.to_iterable_dataset(num_shards=2).with_format("torch")
        return prepare_loader(accelerator, torch.utils.data.DataLoader(stream, batch_size=4))

    first = loader()
    first.set_epoch(0)
    whole, states = [], []
    for i, batch in enumerate(batches_after(first, 0)):
        whole.append(batch["x"].clone())
        states.append(data_position(first, i + 1))
    second = loader()
    second.set_epoch(0)
    rest = [batch["x"] for batch in batches_after(second, 2, saved=states[1])]
    assert len(rest) == 3 and all(torch.equal(a, b) for a, b in zip(whole[2:], rest))


def test_skipping_at_the_sampler_gives_the_remaining_batches_and_gradient_state(fresh_accelerate):
    """The skipping copy against reading and dropping, on the per-sample and the in-memory paths."""
    from distlearn.runtime.accelerator import build_accelerator, prepare_loader
    from distlearn.runtime.loader import TensorBatches, tensor_loaders
    from distlearn.runtime.skipping import batches_after, read_and_drop, skips_at_sampler

    accelerator = build_accelerator(seed=2)
    x, y = torch.arange(22.0).reshape(11, 2), torch.arange(11)
    loaders = [
        torch.utils.data.DataLoader(Counted(11), batch_size=2, shuffle=True,
                                    generator=torch.Generator().manual_seed(1)),
        tensor_loaders(TensorBatches(x, y), TensorBatches(x, y), batch_size=2, shuffle=True, seed=1)["train_loader"],
    ]
    for raw in loaders:
        prepared = prepare_loader(accelerator, raw)
        assert skips_at_sampler(prepared)
        for done in (1, 4, 5):
            passes = []
            for skip in (read_and_drop, batches_after):
                prepared.set_epoch(3)
                state = accelerator.gradient_state
                passes.append([(tuple(t.clone() for t in b), state.end_of_dataloader, state.remainder)
                               for b in skip(prepared, done)])
            (dropped, skipped) = passes
            assert len(skipped) == 6 - done
            for a, b in zip(dropped, skipped):
                assert all(torch.equal(s, t) for s, t in zip(a[0], b[0])) and a[1:] == b[1:]
