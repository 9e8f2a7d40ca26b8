"""One training run for tests/test_checkpoint.py, killed on purpose or left to finish.

    python resume_run.py RUN_DIR RESULT_FILE [KILL]          (or under torchrun / accelerate launch)

Trains a small dropout MLP (so the RNG matters) on 50 samples with a global
batch of 6 (the last step of each epoch is uneven), SGD with momentum and a
StepLR, an Accuracy metric, checkpoints into RUN_DIR every 4 optimizer steps
and at each epoch's end, and resumes from RUN_DIR's newest complete checkpoint
when there is one: the same command run again continues the run.

KILL (optional) makes this process SIGKILL itself:
    step:K        right after optimizer step K (between checkpoints, mid-epoch)
    epoch:E       right after epoch E's end (its checkpoint is written)
    save:K        during the checkpoint save of step K, after the files and before the commit marker
                  (the main process; the others wait in the save's barrier until the launcher stops them)
    rename:K      during the save of step K, after the marker and before the rename
With RANK_ONLY=r in the environment only rank r kills itself.

On a finished run the main process writes RESULT_FILE: the final weights, the record and where it resumed from.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import timedelta

import torch
from accelerate.utils import InitProcessGroupKwargs
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distlearn.training import checkpoint
from distlearn.training.learner import BackwardLearner
from distlearn.metrics import Accuracy

WORLD = int(os.environ.get("WORLD_SIZE", "1"))
RANK = int(os.environ.get("RANK", "0"))
GLOBAL_BATCH = 6
N_EPOCHS = int(os.environ.get("N_EPOCHS", "3"))
ACCUM = int(os.environ.get("ACCUM", "1"))  # gradient accumulation steps (ACCUM=2: 5 optimizer steps per epoch)
COMPILE = os.environ.get("COMPILE")  # a torch.compile backend (tests/test_compile.py): the model runs compiled


def _die(where: str) -> None:
    only = os.environ.get("RANK_ONLY")
    if only is None or int(only) == RANK:
        print(f"rank {RANK}: SIGKILL at {where}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


class KillingCheckpoints(checkpoint.Checkpoints):
    """Checkpoints that kill this process at the chosen point."""

    kill: tuple[str, int] | None = None

    def due(self, step: int) -> bool:
        if self.kill == ("step", step):
            _die(f"step {step}")
        return super().due(step)

    def _commit(self, tmp, final, position, world_size):
        if self.kill == ("save", position["step"]):
            _die(f"the save of step {position['step']}")
        if self.kill == ("rename", position["step"]):
            os_replace = os.replace

            def replace_then_die(src, dst):  # the marker goes in, the folder's rename never happens
                os_replace(src, dst)
                if str(dst).endswith(checkpoint.MARKER):
                    _die(f"the rename of step {position['step']}")

            os.replace = replace_then_die
            try:
                return super()._commit(tmp, final, position, world_size)
            finally:
                os.replace = os_replace
        return super()._commit(tmp, final, position, world_size)


def main() -> None:
    torch.set_num_threads(1)
    run_dir, result_file = sys.argv[1], sys.argv[2]
    kill = None
    if len(sys.argv) > 3:
        kind, value = sys.argv[3].split(":")
        kill = (kind, int(value))

    g = torch.Generator().manual_seed(123)
    x = torch.randn(50, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    xt = torch.randn(23, 8, generator=g)
    yt = (xt[:, 0] > 0).long()
    loaders = {
        "train_loader": DataLoader(TensorDataset(x, y), batch_size=GLOBAL_BATCH // WORLD, shuffle=True),
        "test_loader": DataLoader(TensorDataset(xt, yt), batch_size=5),
    }
    torch.manual_seed(7)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 3))
    learner = BackwardLearner(
        n_epochs=N_EPOCHS, loss=nn.CrossEntropyLoss(),
        optimizer_configs={"optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lr": 0.1, "momentum": 0.9}},
        lr_scheduler_configs={"lr_scheduler_class": "torch.optim.lr_scheduler.StepLR",
                              "lr_scheduler_parameters": {"step_size": 1, "gamma": 0.7}},
        display_every_n_steps=3, seed=5, gradient_accumulation_steps=ACCUM,
        model_options={"compile": {"backend": COMPILE}} if COMPILE else None,
        accelerator_kwargs={"kwargs_handlers": [InitProcessGroupKwargs(timeout=timedelta(seconds=20))]},
    )
    found = checkpoint.latest(run_dir)
    store = KillingCheckpoints(run_dir, every_n_steps=4, keep_last=2, resume_from=found[0] if found else None)
    store.kill = kill if kill and kill[0] in ("step", "save", "rename") else None

    def on_epoch_end(epoch, summary):
        if kill == ("epoch", epoch):
            _die(f"the end of epoch {epoch}")

    record = learner.train(net, loaders, metric=Accuracy(), disable_tqdm=True, on_epoch_end=on_epoch_end,
                           checkpoints=store)
    if learner.accelerator().is_main_process:
        weights = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
        result = {
            "weights_hex": weights.numpy().tobytes().hex(),
            "record": record,
            "resumed_from": found[0].name if found else None,
        }
        with open(result_file, "w") as f:
            json.dump(result, f)
    learner.accelerator().end_training()


if __name__ == "__main__":
    main()
