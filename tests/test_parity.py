"""Parity with a plain PyTorch loop: ``BackwardLearner.train`` ends with bitwise the same weights.

The plain loop is the one a user writes without Accelerate (see ``plain_loop`` and the README's
"Parity with a plain PyTorch loop"): the same model, AdamW, label-smoothed cross entropy, fed
the same batches in the same order, with dropout seeded by ``seed + rank``. On 2 processes it is a
plain ``DistributedDataParallel`` loop (gloo, real processes from the pool).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

N, FEATURES, CLASSES, BATCH, EPOCHS, SEED = 150, 12, 5, 16, 3, 7  # 150 rows: a short last batch on 1 and 2 ranks


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, FEATURES, generator=g)
    return x, (x @ torch.randn(FEATURES, CLASSES, generator=g)).argmax(1)


def make_model() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights for both loops
    return nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, CLASSES))


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)


def epoch_order(epoch: int, world: int) -> torch.Tensor:
    """The rows of every rank's batches of one epoch, global batch after global batch.

    Accelerate's seedable sampler: a permutation from a generator seeded with ``seed + epoch``;
    on several ranks, its ``even_batches``: the order is completed to whole global batches
    (``world * BATCH`` rows) with rows repeated from its start, and the model trains on those
    repeats too. On one process nothing is repeated: the last batch is short.
    """
    order = torch.randperm(N, generator=torch.Generator().manual_seed(SEED + epoch))
    if world == 1:
        return order
    total = -(-N // (world * BATCH)) * world * BATCH
    return order.repeat(-(-total // N))[:total]


def plain_loop(rank: int, world: int) -> dict[str, torch.Tensor]:
    """What a user writes without Accelerate; returns the trained weights."""
    x, y = data()
    model = make_model()
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model)  # averages the gradients over the ranks
    optimizer = make_optimizer(model)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    torch.manual_seed(SEED + rank)  # set_seed(seed, device_specific=True): each rank its own dropout masks
    for epoch in range(EPOCHS):
        order = epoch_order(epoch, world)
        model.train()
        for start in range(rank * BATCH, len(order), world * BATCH):  # rank r: global batches r, r + world, ...
            rows = order[start:start + BATCH]
            loss = loss_fn(model(x[rows]), y[rows])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    module = model.module if world > 1 else model
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def learner_loop(rank: int, world: int, dataset: str = "TensorBatches") -> dict[str, torch.Tensor]:
    """``BackwardLearner.train`` on the same data, without a metric or a test pass; returns the weights."""
    from accelerate.state import AcceleratorState, GradientState

    from distlearn.runtime.loader import TensorBatches, tensor_loaders
    from distlearn.training.learner import BackwardLearner

    AcceleratorState._reset_state(reset_partial_state=True)  # a fresh Accelerator in this (pool) process
    GradientState._reset_state()
    x, y = data()
    if dataset == "TensorBatches":  # the in-memory fast path, as the data configs build it
        loader = tensor_loaders(TensorBatches(x, y), TensorBatches(x, y), batch_size=BATCH, shuffle=True,
                                seed=SEED)["train_loader"]
    else:  # the per-sample DataLoader users write; with its own generator, iterating it leaves the global
        # RNG (the dropout masks) alone: without one, each epoch's iterator draws one number from it
        loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True,
                            generator=torch.Generator().manual_seed(SEED))
    model = make_model()
    learner = BackwardLearner(
        n_epochs=EPOCHS, seed=SEED, loss=nn.CrossEntropyLoss(label_smoothing=0.1), optimizer=make_optimizer(model),
        display_every_n_steps=3,
    )
    learner.train(model, loader, metric=None, test_check=False, disable_tqdm=True)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bitwise_equal(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), f"{name} differs: max |diff| " \
            f"{(got[name] - expected[name]).abs().max().item():.3g}"


@pytest.mark.parametrize("dataset", ["TensorBatches", "TensorDataset"])
def test_one_process_gives_the_plain_loop_weights_bitwise(fresh_accelerate, dataset) -> None:
    plain = plain_loop(0, 1)
    assert not torch.equal(plain["0.weight"], make_model().state_dict()["0.weight"])  # it trained at all
    assert_bitwise_equal(learner_loop(0, 1, dataset), plain)


def learner_and_plain(rank: int, world: int) -> tuple[dict, dict]:
    return learner_loop(rank, world), plain_loop(rank, world)


def test_two_processes_give_the_plain_ddp_loop_weights_bitwise(dist_pool) -> None:
    results = dist_pool.run(learner_and_plain, 2)
    for rank, (learned, plain) in enumerate(results):
        assert_bitwise_equal(learned, plain)
        assert_bitwise_equal(learned, results[0][0])  # every rank holds the same weights
