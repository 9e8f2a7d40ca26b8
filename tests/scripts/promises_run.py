"""Scenarios for tests/test_promises.py, run under a real launcher (python, accelerate launch).

    python promises_run.py OUT_DIR SCENARIO[,SCENARIO...]

Each rank writes OUT_DIR/<scenario>.rank<r>.json, and, as the very last thing
it does, OUT_DIR/done.rank<r>.json: a rank that crashes after the last
collective leaves no ``done`` file, whatever rank 0 wrote.

The module also holds models that ``python -m distlearn train`` builds by name
(``model_configs.model_class: promises_run.DtypeMLP``), with this folder on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from datetime import timedelta
from pathlib import Path

import torch
from accelerate.utils import InitProcessGroupKwargs
from torch import nn
from torch.utils.data import DataLoader, Dataset

from distlearn import BackwardLearner
from distlearn.models import MLP

GLOBAL_BATCH = 6
FAST_FAIL = {"kwargs_handlers": [InitProcessGroupKwargs(timeout=timedelta(seconds=30))]}
WORLD = int(os.environ.get("WORLD_SIZE", "1"))
RANK = int(os.environ.get("RANK", "0"))


class Indexed(Dataset):
    """n samples; feature 0 is the sample's index, so a model can see which samples it got."""

    def __init__(self, n: int, seed: int = 123) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = (self.x[:, 1] > 0).long()
        self.x[:, 0] = torch.arange(n, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class Recorder(nn.Module):
    """Linear -> dropout -> Linear; in training mode records each batch's sample indices and dropout mask."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.first, self.second, self.p = nn.Linear(7, 16), nn.Linear(16, 2), p
        self.indices: list[list[int]] = []
        self.masks: list[list[int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.first(x[:, 1:]))
        if self.training:
            mask = nn.functional.dropout(torch.ones_like(hidden), self.p, training=True) != 0
            self.indices.append(x[:, 0].long().tolist())
            self.masks.append(mask.flatten().int().tolist())
            hidden = hidden * mask / (1 - self.p)
        return self.second(hidden)


def weights(net: nn.Module) -> list[float]:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).tolist()


def sgd(lr: float = 0.1) -> dict:
    return {"optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lr": lr, "momentum": 0.9}}


# --------------------------------------------------------------------------- #
# Scenarios
# --------------------------------------------------------------------------- #


def dropout():
    """48 samples, global batch 6, dropout 0.5: each rank's masks and sample indices per step."""
    net = Recorder()
    learner = BackwardLearner(n_epochs=2, loss=nn.CrossEntropyLoss(), optimizer_configs=sgd(), accelerator_kwargs=FAST_FAIL)
    loader = DataLoader(Indexed(48), batch_size=GLOBAL_BATCH // WORLD, shuffle=True)
    learner.train(net, loader, disable_tqdm=True)
    return {"indices": net.indices, "masks": net.masks}


def drop_last():
    """50 samples, global batch 6, drop_last=True: the same 48 samples per epoch on 1 or 2 processes."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
    learner = BackwardLearner(n_epochs=3, loss=nn.CrossEntropyLoss(), optimizer_configs=sgd(), accelerator_kwargs=FAST_FAIL)
    loader = DataLoader(Indexed(50), batch_size=GLOBAL_BATCH // WORLD, shuffle=True, drop_last=True)
    record = learner.train(net, loader, disable_tqdm=True)
    return {"weights": weights(net), "samples": [e["samples"] for e in record["training"].values()],
            "loss": [e["train_loss"] for e in record["training"].values()]}


def clip():
    """A tiny max_grad_norm on 2 processes: the global (not the local) gradient norm is clipped."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
    learner = BackwardLearner(n_epochs=2, loss=nn.CrossEntropyLoss(), max_grad_norm=1e-2,
                              optimizer_configs={"optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lr": 1.0}},
                              accelerator_kwargs=FAST_FAIL)
    loader = DataLoader(Indexed(48), batch_size=GLOBAL_BATCH // WORLD, shuffle=True)
    initial = weights(net)
    learner.train(net, loader, disable_tqdm=True)
    return {"initial": initial, "weights": weights(net)}


# --------------------------------------------------------------------------- #
# Models for `python -m distlearn train`
# --------------------------------------------------------------------------- #


class DtypeMLP(MLP):
    """An MLP that writes the dtype its first layer computed in, in training, to $PROMISES_DTYPE_FILE."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        path = os.environ.get("PROMISES_DTYPE_FILE")
        if path and self.training:
            Path(f"{path}.rank{RANK}").write_text(str(out.dtype))
        return out


class FinishesWandbMLP(MLP):
    """An MLP that finishes the live W&B run under distlearn's feet at its 5th training batch.

    distlearn's next ``log`` then fails for real inside W&B (the run is finished).
    """

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            FinishesWandbMLP.calls += 1
            if FinishesWandbMLP.calls == 5:
                import wandb

                if wandb.run is not None:
                    wandb.run.finish()
                    Path(os.environ["PROMISES_WANDB_MARK"]).write_text("finished")
        return super().forward(x)


def main() -> None:
    torch.set_num_threads(1)
    out_dir, names = Path(sys.argv[1]), sys.argv[2].split(",")
    for name in names:
        try:
            result = globals()[name]()
        except Exception:
            result = {"crashed": traceback.format_exc()}
        (out_dir / f"{name}.rank{RANK}.json").write_text(json.dumps(result))
    # The learner's process group is torn down by the interpreter; anything that fails until here shows.
    (out_dir / f"done.rank{RANK}.json").write_text(json.dumps({"world": WORLD}))


if __name__ == "__main__":
    main()
