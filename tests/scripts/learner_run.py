"""Scenarios for tests/test_learner.py, run under a real launcher (python, accelerate launch, torchrun).

    python learner_run.py OUT_DIR SCENARIO[,SCENARIO...]

Each rank writes OUT_DIR/<scenario>.rank<r>.json: the records, the full test
result, the final weights and anything the test compares. The test compares
the files of 1, 2 and 3 processes. A scenario that raises writes the error
instead, so one failing scenario does not hide the others.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from datetime import timedelta

import torch
from accelerate.utils import InitProcessGroupKwargs
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from distlearn.training.learner import BackwardLearner
from distlearn.metrics import Accuracy

GLOBAL_BATCH = 6  # per-process batch = GLOBAL_BATCH // world size: the same global batch on 1, 2, 3 processes
FAST_FAIL = {"kwargs_handlers": [InitProcessGroupKwargs(timeout=timedelta(seconds=30))]}  # a hang fails fast
WORLD = int(os.environ.get("WORLD_SIZE", "1"))
RANK = int(os.environ.get("RANK", "0"))


def data(n: int, seed: int = 123) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()  # 3 classes
    return TensorDataset(x, y)


def model() -> nn.Module:
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))


def loaders(n_train: int, n_test: int = 37, global_batch: int = GLOBAL_BATCH, train_set=None) -> dict:
    batch = global_batch // WORLD
    return {
        "train_loader": DataLoader(train_set or data(n_train), batch_size=batch, shuffle=True),
        "test_loader": DataLoader(data(n_test, seed=9), batch_size=5),
    }


def sgd(**extra):
    return {"optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lr": 0.1, "momentum": 0.9, **extra}}


def weights(net: nn.Module) -> list[float]:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).tolist()


def run(learner: BackwardLearner, net: nn.Module, loader: dict, **kwargs) -> dict:
    record = learner.train(net, loader, metric=Accuracy(), disable_tqdm=True, **kwargs)
    full = learner.test(net, loader["test_loader"], metric=Accuracy())
    accelerator = learner.accelerator()
    return {
        "record": record,
        "test": full,
        "weights": weights(net),
        "state": learner.state_dict(),
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
    }


# --------------------------------------------------------------------------- #
# Scenarios
# --------------------------------------------------------------------------- #


def even():
    """Data that divide into whole global batches: same weights on any number of processes."""
    config = {"lr_scheduler_class": "torch.optim.lr_scheduler.StepLR", "lr_scheduler_parameters": {"step_size": 1, "gamma": 0.5}}
    learner = BackwardLearner(
        n_epochs=3, loss=nn.CrossEntropyLoss(), optimizer_configs=sgd(), lr_scheduler_configs=config,
        max_grad_norm=1.0, display_every_n_steps=3, accelerator_kwargs=FAST_FAIL,
    )
    return run(learner, model(), loaders(48))


def uneven():
    """50 samples, global batch 6: the last step holds 2 real samples and Accelerate's repeats."""
    learner = BackwardLearner(n_epochs=2, loss=nn.CrossEntropyLoss(), optimizer_configs=sgd(), accelerator_kwargs=FAST_FAIL)
    return run(learner, model(), loaders(50))


def accum():
    """Gradient accumulation 2 x global batch 6, per-step StepLR: 4 optimizer steps per epoch."""
    config = {"lr_scheduler_class": "torch.optim.lr_scheduler.StepLR", "lr_scheduler_parameters": {"step_size": 1, "gamma": 0.9}}
    learner = BackwardLearner(
        n_epochs=2, loss=nn.CrossEntropyLoss(), optimizer_configs=sgd(), lr_scheduler_configs=config,
        scheduler_interval="step", gradient_accumulation_steps=2, accelerator_kwargs=FAST_FAIL,
    )
    return run(learner, model(), loaders(48, global_batch=GLOBAL_BATCH))


def bigbatch():
    """The large-batch twin of accum(): global batch 12, no accumulation."""
    config = {"lr_scheduler_class": "torch.optim.lr_scheduler.StepLR", "lr_scheduler_parameters": {"step_size": 1, "gamma": 0.9}}
    learner = BackwardLearner(
        n_epochs=2, loss=nn.CrossEntropyLoss(), optimizer_configs=sgd(), lr_scheduler_configs=config,
        scheduler_interval="step", accelerator_kwargs=FAST_FAIL,
    )
    # The same sample order as accum(): its 12-sample windows are two consecutive 6-sample global batches
    # of one permutation, and a 12-batch sampler walks the same permutation (same seed, same epoch).
    return run(learner, model(), loaders(48, global_batch=12))


def plateau():
    """ReduceLROnPlateau gets the global test loss every epoch."""
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=0)
    learner = BackwardLearner(
        n_epochs=3, loss=nn.CrossEntropyLoss(), optimizer=optimizer, lr_scheduler=scheduler, accelerator_kwargs=FAST_FAIL,
    )
    out = run(learner, net, loaders(48), display_step=5)
    out["best"] = scheduler.best
    out["final_lr"] = optimizer.param_groups[0]["lr"]
    return out


def transductive():
    """Full-batch training on one graph-like batch of 30 rows: train_idx/test_idx select the rows."""
    x, y = data(30).tensors
    loader = DataLoader(TensorDataset(x, y), batch_size=30)  # one batch; other ranks get Accelerate's repeat of it
    train_idx, test_idx = torch.arange(0, 30, 2), torch.arange(1, 30, 2)
    learner = BackwardLearner(n_epochs=3, loss=nn.CrossEntropyLoss(), optimizer_configs=sgd(), accelerator_kwargs=FAST_FAIL)
    net = model()
    record = learner.train(
        net, {"train_loader": loader, "test_loader": loader}, metric=Accuracy(), disable_tqdm=True,
        train_idx=train_idx, test_idx=test_idx,
    )
    full = learner.test(net, loader, metric=Accuracy(), test_idx=test_idx)
    return {"record": record, "test": full, "weights": weights(net)}


class _NaNAt(Dataset):
    """data(48) with a NaN feature at one index: the loss of its batch is NaN on one rank only."""

    def __init__(self, index: int) -> None:
        self.base, self.index = data(48), index

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return (torch.full_like(x, float("nan")) if i == self.index else x), y


def nan():
    """Index 20 is in global step 3 (20 // 6), on rank (20 % 6) // (6 // world)."""
    out = {}
    for every in (0, 2):
        learner = BackwardLearner(
            n_epochs=2, loss=nn.CrossEntropyLoss(), optimizer_configs=sgd(), display_every_n_steps=every,
            accelerator_kwargs=FAST_FAIL,
        )
        loader = {"train_loader": DataLoader(_NaNAt(20), batch_size=GLOBAL_BATCH // WORLD)}
        out[f"every_{every}"] = _error_of(lambda: learner.train(model(), loader, disable_tqdm=True))
    # nonfinite="skip": the NaN batch's optimizer step is skipped on every rank, once per epoch
    learner = BackwardLearner(
        n_epochs=2, loss=nn.CrossEntropyLoss(), optimizer_configs=sgd(), display_every_n_steps=2,
        accelerator_kwargs=FAST_FAIL,
    )
    net = model()
    loader = {"train_loader": DataLoader(_NaNAt(20), batch_size=GLOBAL_BATCH // WORLD)}
    out["skip"] = run(learner, net, {**loader, "test_loader": loaders(6)["test_loader"]}, nonfinite="skip")
    return out


class _Triples(Dataset):
    def __len__(self) -> int:
        return 12

    def __getitem__(self, i):
        return torch.zeros(8), torch.tensor(0), torch.tensor(1.0)


def _one_rank_triples(batch):
    """Collate that breaks the batch format on the last rank only."""
    x = torch.stack([b[0] for b in batch])
    y = torch.stack([b[1] for b in batch])
    return (x, y, "extra") if RANK == WORLD - 1 else (x, y)


def errors():
    """Bad input: a clear error on every rank, none left waiting in a collective."""
    sgd_learner = lambda: BackwardLearner(n_epochs=1, loss=nn.CrossEntropyLoss(), optimizer_configs=sgd(), accelerator_kwargs=FAST_FAIL)  # noqa: E731
    empty = TensorDataset(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long))
    one_rank_empty = data(12) if RANK == 0 else empty
    return {
        "empty": _error_of(lambda: sgd_learner().train(model(), DataLoader(empty, batch_size=2), disable_tqdm=True)),
        "one_rank_empty": _error_of(
            lambda: sgd_learner().train(model(), DataLoader(one_rank_empty, batch_size=2), disable_tqdm=True)
        ),
        "triples": _error_of(lambda: sgd_learner().train(model(), DataLoader(_Triples(), batch_size=2), disable_tqdm=True)),
        "one_rank_triples": _error_of(
            lambda: sgd_learner().train(
                model(), DataLoader(data(12), batch_size=2, collate_fn=_one_rank_triples), disable_tqdm=True
            )
        ),
        "no_optimizer": _error_of(
            lambda: BackwardLearner(n_epochs=1, loss=nn.CrossEntropyLoss()).train(model(), DataLoader(data(12)))
        ),
        "no_loss": _error_of(lambda: BackwardLearner(n_epochs=1, optimizer_configs=sgd()).train(model(), DataLoader(data(12)))),
        # after all that, the process group still works:
        "after": even()["record"]["training"][2]["train_loss"],
    }


def user_trap():
    """An Accelerator built without the CPU backend on a CPU-only multi-process launch: refused on every rank."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # Run after another scenario: forget its Accelerator state (test-only) but keep its gloo group, so
    # this Accelerator sees 1 process, as a plain Accelerator() does on a CPU-only torchrun launch.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    trapped = Accelerator()
    out = {"trapped_num_processes": trapped.num_processes}
    learner = BackwardLearner(n_epochs=1, loss=nn.CrossEntropyLoss(), optimizer_configs=sgd(), accelerator=trapped)
    out["error"] = _error_of(lambda: learner.train(model(), loaders(48), disable_tqdm=True))
    return out


def _error_of(fn) -> dict:
    try:
        fn()
    except Exception as error:  # the test checks the type and message
        return {"type": type(error).__name__, "message": str(error), "value_error": isinstance(error, ValueError)}
    return {"type": None, "message": None, "value_error": False}


def main() -> None:
    torch.set_num_threads(1)  # 2 cores shared by up to 3 ranks
    out_dir, names = sys.argv[1], sys.argv[2].split(",")
    for name in names:
        try:
            result = globals()[name]()
        except Exception:
            result = {"crashed": traceback.format_exc()}
        rank = int(os.environ.get("RANK", "0"))
        with open(os.path.join(out_dir, f"{name}.rank{rank}.json"), "w") as f:
            json.dump(result, f)
    # Every rank arrives, then the group is destroyed before the interpreter's teardown: a rank exiting with
    # gloo's threads still talking to a peer can abort ("terminate called without an active exception",
    # exit -6; seen once under accelerate launch in CI), as the README's loop says with end_training().
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
