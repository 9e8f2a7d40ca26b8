"""Raw user loops over Accelerate-prepared loaders: drop_padding and prepare_loader give every sample once.

Each rank builds a real Accelerator (CPU, gloo) inside the pool's process group.
"""

from __future__ import annotations

import collections
import functools
import json
import math
import subprocess

import numpy as np
import pytest
import torch

from distlearn import drop_padding


def _accelerator(**config):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    return Accelerator(
        cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=0, **config)
    )


def raw_loop(rank, world, n, batch):
    from torch.utils.data import DataLoader, TensorDataset

    from distlearn import Accuracy, Cat, Mean, calculate

    torch.manual_seed(100 + rank)  # rank-dependent seeds, as a learner seeds dropout
    x = torch.arange(n, dtype=torch.float64)
    y = (torch.arange(n) % 3 == 0).long()
    accelerator = _accelerator()
    loader = accelerator.prepare(DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True))
    mean, accuracy, seen, batch_mean = Mean(), Accuracy(), Cat(), Mean()
    for features, labels in loader:
        features, labels = drop_padding(accelerator, features, labels)
        score = torch.stack([1 - (features % 2), features % 2], 1)  # predicts odd -> class 1
        mean(features.mean(), weight=len(features))  # an empty last batch: NaN of weight 0, which adds nothing
        batch_mean.extend(features)
        accuracy(y_score=score, y_true=labels)
        seen(features)
    return calculate([mean, batch_mean, accuracy, seen])


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("n,batch", [(22, 4), (7, 3), (2, 4)])
def test_a_raw_loop_with_drop_padding_is_exact(dist_pool, world, n, batch):
    x = np.arange(n, dtype=np.float64)
    y = (np.arange(n) % 3 == 0).astype(int)
    expected_accuracy = float(((x % 2).astype(int) == y).mean())
    for mean, batch_mean, accuracy, seen in dist_pool.run(raw_loop, world, n, batch):
        assert sorted(seen.tolist()) == list(range(n))  # every sample exactly once
        assert mean == pytest.approx(x.mean()) and batch_mean == pytest.approx(x.mean())
        assert accuracy == pytest.approx(expected_accuracy)


def without_drop_padding(rank, world, n, batch):
    from torch.utils.data import DataLoader, TensorDataset

    accelerator = _accelerator()
    loader = accelerator.prepare(DataLoader(TensorDataset(torch.arange(n)), batch_size=batch))
    return sum(len(b[0]) for b in loader)


def test_without_drop_padding_the_loop_counts_duplicates(dist_pool):
    # what drop_padding is for: 22 samples, batch 4, 3 ranks -> 24 rows
    assert sum(dist_pool.run(without_drop_padding, 3, 22, 4)) == 24


def test_drop_padding_checks_its_arguments():
    class State:
        end_of_dataloader, remainder = True, 5

    class Fake:
        gradient_state, process_index = State(), 1

    out, labels = drop_padding(Fake(), torch.zeros(4, 2), {"y": torch.arange(4)})
    assert out.shape == (1, 2) and labels["y"].tolist() == [0]
    assert drop_padding(Fake(), torch.zeros(4)).shape == (1,)
    with pytest.raises(ValueError, match="argument 1 has shape"):
        drop_padding(Fake(), torch.zeros(4), torch.zeros(3))
    with pytest.raises(TypeError, match="tensors or dicts of tensors"):
        drop_padding(Fake(), torch.zeros(4), [1, 2, 3, 4])
    State.end_of_dataloader = False
    same = torch.zeros(4)
    assert drop_padding(Fake(), same) is same


SHAPES = ["batch_size", "sampler_batch_sampler", "batch_sampler", "iterable", "split_batches", "dispatch_batches"]


def loader_shape(rank, world, shape, n):
    from torch.utils.data import (
        BatchSampler,
        DataLoader,
        IterableDataset,
        RandomSampler,
        TensorDataset,
    )

    from distlearn.runtime.accelerator import prepare_loader

    torch.manual_seed(100 + rank)
    ds = TensorDataset(torch.arange(n))

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(torch.arange(n).unsqueeze(1))

    config = {"split_batches": shape == "split_batches", "dispatch_batches": shape == "dispatch_batches" or None}
    accelerator = _accelerator(**config)
    if shape in ("batch_size", "split_batches", "dispatch_batches"):
        raw = DataLoader(ds, batch_size=2 * 3, shuffle=True)
    elif shape == "sampler_batch_sampler":
        raw = DataLoader(ds, sampler=BatchSampler(RandomSampler(ds), 4, False), batch_size=None)
    elif shape == "batch_sampler":
        raw = DataLoader(ds, batch_sampler=BatchSampler(RandomSampler(ds), 4, False))
    else:
        raw = DataLoader(Stream(), batch_size=4)
    loader = prepare_loader(accelerator, raw)
    epochs = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        rows = []
        for batch in loader:
            features = batch if isinstance(batch, torch.Tensor) else batch[0]
            rows += drop_padding(accelerator, features).reshape(-1).tolist()
        epochs.append(rows)
    return epochs


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("shape", SHAPES)
def test_every_loader_shape_gives_every_sample_once(dist_pool, world, shape):
    n = 22
    per_rank = dist_pool.run(loader_shape, world, shape, n)
    for epoch in range(2):
        rows = [r for epochs in per_rank for r in epochs[epoch]]
        assert collections.Counter(rows) == collections.Counter(range(n)), (shape, world, epoch)


def test_drop_last_is_refused_for_evaluation():
    from torch.utils.data import (
        BatchSampler,
        DataLoader,
        SequentialSampler,
        TensorDataset,
    )

    from distlearn.runtime.accelerator import check_loader

    ds = TensorDataset(torch.arange(10))
    with pytest.raises(ValueError, match="drop_last=True: the last incomplete global batch"):
        check_loader(DataLoader(ds, batch_size=3, drop_last=True), drop_last_ok=False)
    with pytest.raises(ValueError, match="drop_last=True"):
        check_loader(DataLoader(ds, sampler=BatchSampler(SequentialSampler(ds), 3, True), batch_size=None),
                     drop_last_ok=False)
    check_loader(DataLoader(ds, batch_size=3, drop_last=True))  # fine for training
    check_loader(DataLoader(ds, batch_size=3), drop_last_ok=False)


# --------------------------------------------------------------------------- #
# The README's loop, as written, in real launches
# --------------------------------------------------------------------------- #

_PRELUDE = """
import json, os, sys
import torch
torch.manual_seed(0)
features = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
loader = torch.utils.data.DataLoader(
    torch.utils.data.TensorDataset(features, (features[:, 0] > 0).long()), batch_size=3)
model, criterion = torch.nn.Linear(4, 2), torch.nn.CrossEntropyLoss()
"""

_REPORT = """
with open(os.path.join(sys.argv[1], f"rank{accelerator.process_index}.json"), "w") as f:
    json.dump({"loss": float(values["loss"]), "acc": float(values["acc"]), "preds": values["preds"].tolist(),
               "processes": accelerator.num_processes}, f)
"""


def _readme_loop() -> str:
    """The README's "Accumulators on their own" code block, as it is written there."""
    from launching import ROOT

    text = (ROOT / "README.md").read_text()
    start = text.index("```python", text.index("Accumulators on their own")) + len("```python")
    return text[start : text.index("```", start)]


def _launch(script, procs: int, out, plain: bool = False, torchrun: bool = False) -> subprocess.Popen:
    """``script OUT`` on ``procs`` processes; ``plain``: without ACCELERATE_USE_CPU=1 (as a user types it).

    Forked warm (tests/warm.py: one process, or several as a hand launch with torchrun's variables)
    unless ``torchrun``: a real cold ``torchrun --standalone``.
    """
    from launching import launch_env, script_command

    out.mkdir()
    env = launch_env()
    if plain:
        del env["ACCELERATE_USE_CPU"]
    import warm

    if torchrun:
        return subprocess.Popen(script_command(procs, script, str(out)), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    command = script_command(1, script, str(out))
    launch = warm.Popen if procs == 1 else functools.partial(warm.Ranks, procs)
    return launch(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_the_readme_loop_gives_one_process_numbers_on_two_even_under_plain_torchrun(tmp_path):
    """50 samples at batch 3 on 2 processes: rank 1's last batch is empty (its loss NaN, weight 0).

    Launched as the README says, with and without ACCELERATE_USE_CPU=1 (build_accelerator asks for gloo
    itself); a bare Accelerator without it is refused by drop_padding instead of counting twice. The run
    as a user types it goes through a real torchrun; the others are ranks forked warm with its variables.
    """
    loop = _readme_loop()
    assert "build_accelerator()" in loop and "drop_padding" in loop
    script = tmp_path / "readme_loop.py"
    script.write_text(_PRELUDE + loop + _REPORT)
    bare = tmp_path / "bare_accelerator.py"
    bare.write_text(_PRELUDE + loop.replace("build_accelerator()", "__import__('accelerate').Accelerator()") + _REPORT)
    runs = {
        "one": _launch(script, 1, tmp_path / "one"),
        "two_cpu": _launch(script, 2, tmp_path / "two_cpu"),
        "two_plain": _launch(script, 2, tmp_path / "two_plain", plain=True, torchrun=True),
        "bare": _launch(bare, 2, tmp_path / "bare", plain=True),
    }
    logs = {name: proc.communicate(timeout=240)[0] for name, proc in runs.items()}
    for name in ("one", "two_cpu", "two_plain"):
        assert runs[name].returncode == 0, logs[name]
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    assert len(one["preds"]) == 50 and math.isfinite(one["loss"])
    for name in ("two_cpu", "two_plain"):
        for rank in range(2):
            got = json.loads((tmp_path / name / f"rank{rank}.json").read_text())
            assert got["processes"] == 2, (name, got)
            assert got["preds"] == one["preds"], name  # every sample once, in dataset order
            assert got["loss"] == pytest.approx(one["loss"], rel=1e-6) and got["acc"] == one["acc"], (name, got, one)
    assert runs["bare"].returncode != 0
    assert "the Accelerator sees 1 process(es) but the process group holds 2" in logs["bare"], logs["bare"]
    assert not list((tmp_path / "bare").iterdir())  # no rank got as far as a result
