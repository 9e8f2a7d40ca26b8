"""One training run for tests/test_elastic.py: records which samples it trains on; killed or left to finish.

    python elastic_run.py RUN_DIR RESULT_FILE [step:K]          (or under torchrun / accelerate launch)

Trains a small MLP (no dropout: a resume on another world size re-derives the random generators)
on 50 samples whose last feature column is the sample's index, with a global batch of 6 (the last
step of each epoch is uneven), SGD with momentum and a StepLR, an Accuracy metric, checkpoints
into RUN_DIR every 4 optimizer steps and at each epoch's end; it resumes from RUN_DIR's newest
complete checkpoint when there is one (the same command run again continues the run, on any
number of processes).

ACCUM (environment, default 1) is the gradient accumulation steps.

The per-process batch is PER_PROCESS (environment; default 6 / WORLD_SIZE): a resume on another
number of processes keeps the checkpoint's global batch whatever this says (run.resume_batch global).

Every training forward appends a line ``epoch step index index ...`` to
RUN_DIR/samples-<ATTEMPT>-<rank>.txt (ATTEMPT from the environment, default 0), where step is
the number of optimizer steps taken before that batch.

step:K makes every process (RANK_ONLY=r: only rank r) SIGKILL itself right after optimizer step K.
On a finished run the main process writes RESULT_FILE: the final weights, the record, where it resumed from.
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
N_SAMPLES = int(os.environ.get("N_SAMPLES", "50"))
N_EPOCHS = int(os.environ.get("N_EPOCHS", "3"))
ACCUM = int(os.environ.get("ACCUM", "1"))  # gradient accumulation steps


class Killing(checkpoint.Checkpoints):
    kill_step: int | None = None

    def due(self, step: int) -> bool:
        only = os.environ.get("RANK_ONLY")
        if step == self.kill_step and (only is None or int(only) == RANK):
            print(f"rank {RANK}: SIGKILL at step {step}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return super().due(step)


class Recorded(nn.Module):
    """The MLP on all but the last feature column; the last one (the sample index) is written down."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
        self.path = path
        self.learner: BackwardLearner | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.training and self.learner is not None:
            idx = " ".join(str(int(i)) for i in features[:, -1].tolist())
            with open(self.path, "a") as f:
                f.write(f"{self.learner.epoch} {self.learner.step} {idx}\n")
        return self.net(features[:, :-1])


def main() -> None:
    torch.set_num_threads(1)
    run_dir, result_file = sys.argv[1], sys.argv[2]
    kill = int(sys.argv[3].split(":")[1]) if len(sys.argv) > 3 else None
    os.makedirs(run_dir, exist_ok=True)

    g = torch.Generator().manual_seed(123)
    x = torch.randn(N_SAMPLES, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    features = torch.cat([x, torch.arange(N_SAMPLES, dtype=torch.float32)[:, None]], dim=1)
    xt = torch.randn(23, 8, generator=g)
    test_features = torch.cat([xt, torch.zeros(23, 1)], dim=1)
    yt = (xt[:, 0] > 0).long()
    per_process = int(os.environ.get("PER_PROCESS", GLOBAL_BATCH // WORLD))
    loaders = {
        "train_loader": DataLoader(TensorDataset(features, y), batch_size=per_process, shuffle=True),
        "test_loader": DataLoader(TensorDataset(test_features, yt), batch_size=5),
    }
    torch.manual_seed(7)
    net = Recorded(os.path.join(run_dir, f"samples-{os.environ.get('ATTEMPT', '0')}-{RANK}.txt"))
    learner = BackwardLearner(
        n_epochs=N_EPOCHS, loss=nn.CrossEntropyLoss(),
        optimizer_configs={"optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lr": 0.1, "momentum": 0.9}},
        lr_scheduler_configs={"lr_scheduler_class": "torch.optim.lr_scheduler.StepLR",
                              "lr_scheduler_parameters": {"step_size": 1, "gamma": 0.7}},
        display_every_n_steps=3, seed=5, gradient_accumulation_steps=ACCUM,
        accelerator_kwargs={"kwargs_handlers": [InitProcessGroupKwargs(timeout=timedelta(seconds=20))]},
    )
    net.learner = learner
    found = checkpoint.latest(run_dir)
    store = Killing(run_dir, every_n_steps=4, keep_last=2, resume_from=found[0] if found else None,
                    resume_batch=os.environ.get("RESUME_BATCH", "global"))
    store.kill_step = kill
    record = learner.train(net, loaders, metric=Accuracy(), disable_tqdm=True, checkpoints=store)
    if learner.accelerator().is_main_process:
        weights = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
        result = {
            "weights": weights.tolist(),
            "record": record,
            "resumed_from": found[0].name if found else None,
            "resumed_step": found[1]["step"] if found else None,
            "world_size": WORLD,
        }
        with open(result_file, "w") as f:
            json.dump(result, f)
    learner.accelerator().end_training()


if __name__ == "__main__":
    main()
