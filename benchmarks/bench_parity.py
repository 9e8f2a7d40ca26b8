"""BackwardLearner against the plain PyTorch loop a user writes without Accelerate (parity, cost, memory).

Each job is built from its shipped config (``build_experiment``: the same data, model,
initial weights, optimizer, loss, scheduler, gradient clipping); the plain loop then trains
a copy of the same initial model on the same batches in the same order (see the README's
"Parity with a plain PyTorch loop") with no Accelerate at all, and keeps what a user keeps: the
epoch's sample-weighted loss (and with ``+acc`` the correct predictions), summed on the device
and read once per epoch. The learner runs with no test pass. Runs are interleaved, the order
alternating (learner, plain, plain, learner, ...), and each pair's CPU-time ratio is taken (the
machine is shared: CPU time is what load does not inflate; a rank waiting in a gloo collective
sleeps, it does not spin); the figure is the median of those ratios, printed with their spread. One thread
per process. The final weights of the two loops are compared too (``equal`` / ``DIFFER``).
Each job also prints ``median step``: the ratio of the median CPU time of the main thread from one
batch's end to the next within an epoch (the step with its batch's fetch and bookkeeping, without
the per-epoch reduction and the per-run preparation), the learner's over the plain loop's.

Jobs: ``digits`` (configs/digits.yaml, no metric), ``digits+acc`` (with train accuracy),
``ddp`` (digits on 2 processes under torchrun, against a plain ``DistributedDataParallel``
loop; the CPU time of both ranks), ``charlm`` (configs/charlm.yaml with its metrics, on the first
``--charlm-chars`` characters). Memory: the peak host RSS growth of a fresh process after
its imports (both loops import the same modules and build the same experiment first).

    python benchmarks/bench_parity.py [--repeats 7] [--jobs digits digits+acc ddp charlm memory]
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("ACCELERATE_USE_CPU", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distlearn.experiment.build import build_experiment  # noqa: E402
from distlearn.experiment.load import load_config  # noqa: E402
from distlearn.training.learner import BackwardLearner  # noqa: E402 (both loops import the same modules)

TARGETS = {"digits": 1.10, "digits+acc": 1.15, "ddp": 1.05, "charlm": 1.05}
STEP_ENDS: list[tuple[int, float]] = []  # (epoch, the main thread's CPU seconds) at the end of each batch of a run


def job_config(job: str, epochs: int, charlm_chars: int):
    """The job's shipped config, with fewer epochs (and characters) to keep a run short."""
    if job.startswith("charlm"):
        return load_config(ROOT / "configs" / "charlm.yaml", [
            f"learner_configs.learner_parameters.n_epochs={epochs}",
            f"data_configs.data_parameters.max_chars={charlm_chars}"])
    return load_config(ROOT / "configs" / "digits.yaml", [f"learner_configs.learner_parameters.n_epochs={epochs}"])


def reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def learner_run(exp, metric: bool) -> nn.Module:
    """``BackwardLearner.train`` on the training loader only (no test pass)."""
    exp.learner.train(exp.model, exp.data_loaders["train_loader"], metric=exp.metric if metric else None,
                      test_check=False, disable_tqdm=True)
    return exp.model


def epoch_order(n: int, seed: int, epoch: int, world: int, batch: int) -> torch.Tensor:
    """Accelerate's seedable order for (seed, epoch); on several ranks completed to whole global batches."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    if world == 1:
        return order
    total = -(-n // (world * batch)) * world * batch
    return order.repeat(-(-total // n))[:total]


def plain_run(exp, metric: bool, rank: int = 0, world: int = 1) -> nn.Module:
    """The plain loop: no Accelerate; a plain DistributedDataParallel on several ranks."""
    learner, loader = exp.learner, exp.data_loaders["train_loader"]
    x, y = loader.dataset.tensors
    batch, seed, clip = loader.batch_size, learner.seed, learner.max_grad_norm
    model = exp.model
    optimizer_class, parameters = learner._optimizer_spec
    optimizer = optimizer_class(model.parameters(), **copy.deepcopy(parameters))
    scheduler = None
    if learner._lr_scheduler_spec is not None:
        scheduler_class, parameters = learner._lr_scheduler_spec
        scheduler = scheduler_class(optimizer, **copy.deepcopy(parameters))
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model)
    loss_fn = learner.loss
    torch.manual_seed(seed + rank)
    for epoch in range(learner.n_epochs):
        order = epoch_order(len(x), seed, epoch, world, batch)
        model.train()
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, weight, correct
        for start in range(rank * batch, len(order), world * batch):
            rows = order[start:start + batch]
            xb, yb = x[rows], y[rows]
            out = model(xb)
            logits, target = out.reshape(-1, out.shape[-1]), yb.reshape(-1)  # tokens: (B*T, V), (B*T,)
            loss = loss_fn(logits, target)
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            optimizer.zero_grad()
            totals[0] += loss.detach() * target.shape[0]
            totals[1] += target.shape[0]
            if metric:
                totals[2] += (logits.detach().argmax(-1) == target).sum()
            STEP_ENDS.append((epoch, time.thread_time()))
        if world > 1:
            dist.all_reduce(totals)
        _ = (totals[0] / totals[1]).item(), (totals[2] / totals[1]).item()  # what a user logs
        if scheduler is not None:
            scheduler.step()
    return exp.model


def note_step_ends() -> None:
    """The learner notes the end of each batch in STEP_ENDS as the plain loop does (one list append)."""
    train_batch = BackwardLearner._train_batch

    def noted(self, run, batch, accounting):
        stepped = train_batch(self, run, batch, accounting)
        STEP_ENDS.append((self.epoch, time.thread_time()))  # self.epoch: the running epoch until its end
        return stepped

    BackwardLearner._train_batch = noted


def step_seconds() -> list[float]:
    """The main thread's CPU seconds from one batch's end to the next's within an epoch: each step with
    its batch's fetch and bookkeeping, without the epoch's and the run's own work."""
    return [b[1] - a[1] for a, b in zip(STEP_ENDS, STEP_ENDS[1:]) if a[0] == b[0]]


def timed(job: str, kind: str, epochs: int, chars: int, rank: int = 0,
          world: int = 1) -> tuple[float, dict, list[float]]:
    """CPU seconds of one training run (building the experiment is not counted; on every thread of
    the process: gloo's and DDP's too), its final weights, and its steps' seconds (:func:`step_seconds`)."""
    reset_accelerate()
    exp = build_experiment(job_config(job, epochs, chars))
    metric = job != "digits" and job != "ddp"
    STEP_ENDS.clear()
    begin = time.process_time()
    model = learner_run(exp, metric) if kind == "learner" else plain_run(exp, metric, rank, world)
    return time.process_time() - begin, {k: v.detach().clone() for k, v in model.state_dict().items()}, step_seconds()


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def interleaved(job: str, args, rank: int = 0, world: int = 1) -> tuple[list[float], bool, float]:
    """Adjacent-run ratios learner / plain (CPU time; on several ranks the sum over ranks), whether the
    weights were equal, and the ratio of the median step times (on several ranks their mean over ranks)."""
    epochs = args.charlm_epochs if job == "charlm" else args.epochs
    ratios, equal, steps = [], True, {"learner": [], "plain": []}
    timed(job, "plain", 1, args.charlm_chars, rank, world)  # warm up (first-call costs of both)
    timed(job, "learner", 1, args.charlm_chars, rank, world)
    for pair in range(args.repeats):
        spent = {}
        # the order alternates: the second run of a pair meets the caches, heap and clock state the first left
        for kind in ("learner", "plain") if pair % 2 == 0 else ("plain", "learner"):
            seconds, weights, step_times = timed(job, kind, epochs, args.charlm_chars, rank, world)
            steps[kind] += step_times
            if world > 1:
                total = torch.tensor([seconds], dtype=torch.float64)
                dist.all_reduce(total)
                seconds = float(total)
            spent[kind] = (seconds, weights)
        ratios.append(spent["learner"][0] / spent["plain"][0])
        equal = equal and same(spent["learner"][1], spent["plain"][1])
    step_ratio = statistics.median(steps["learner"]) / statistics.median(steps["plain"])
    if world > 1:
        mean = torch.tensor([step_ratio / world], dtype=torch.float64)
        dist.all_reduce(mean)
        step_ratio = float(mean)
    return ratios, equal, step_ratio


def report(job: str, ratios: list[float], equal: bool, step_ratio: float) -> None:
    median = statistics.median(ratios)
    verdict = "ok" if median <= TARGETS[job] else "OVER"
    print(f"{job:11s} learner/plain CPU time {median:.3f}x (target <= {TARGETS[job]:.2f}x, {verdict}); "
          f"{len(ratios)} ratios {min(ratios):.3f}-{max(ratios):.3f}: {', '.join(f'{r:.3f}' for r in ratios)}; "
          f"median step {step_ratio:.3f}x; weights {'equal' if equal else 'DIFFER'}", flush=True)


def ddp_worker(args) -> None:
    """Rank of the 2-process job (under torchrun): interleaved learner and plain DDP runs."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    result = interleaved("ddp", args, dist.get_rank(), dist.get_world_size())
    if dist.get_rank() == 0:
        report("ddp", *result)
    dist.destroy_process_group()


def memory_worker(kind: str, epochs: int) -> None:
    """Peak RSS growth (KiB) of one digits run with train accuracy, after the imports and the build."""
    torch.set_num_threads(1)
    exp = build_experiment(job_config("digits+acc", epochs, 0))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    learner_run(exp, True) if kind == "learner" else plain_run(exp, True)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)


def memory(args) -> None:
    growth: dict[str, list[int]] = {"learner": [], "plain": []}
    for _ in range(max(3, args.repeats // 2)):
        for kind in growth:
            command = [sys.executable, __file__, "--memory-worker", kind, "--epochs", str(args.epochs)]
            out = subprocess.run(command, capture_output=True, text=True, check=True,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
            growth[kind].append(int(out.stdout.split()[-1]))
    learner, plain = statistics.median(growth["learner"]), statistics.median(growth["plain"])
    verdict = "ok" if learner <= plain * 1.05 + 64 else "OVER"  # 64 KiB: the resolution of page counting
    print(f"memory      peak RSS growth after imports: learner {learner / 1024:.1f} MiB, plain {plain / 1024:.1f} MiB "
          f"({learner / max(plain, 1):.2f}x, target <= plain + 5%, {verdict}); samples {growth}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=10, help="digits epochs per run (the config's 40 is long)")
    parser.add_argument("--charlm-epochs", type=int, default=1)
    parser.add_argument("--charlm-chars", type=int, default=60000)
    parser.add_argument("--jobs", nargs="+", default=["digits", "digits+acc", "ddp", "charlm", "memory"])
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", choices=["learner", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    note_step_ends()
    if args.ddp_worker:
        return ddp_worker(args)
    if args.memory_worker:
        return memory_worker(args.memory_worker, args.epochs)
    print(f"torch {torch.__version__}, {args.repeats} pairs, one thread per process, digits {args.epochs} epochs, "
          f"charlm {args.charlm_epochs} epoch(s) of {args.charlm_chars} characters", flush=True)
    for job in args.jobs:
        if job == "memory":
            memory(args)
        elif job == "ddp":
            command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                       __file__, "--ddp-worker", "--repeats", str(args.repeats), "--epochs", str(args.epochs)]
            subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        else:
            report(job, *interleaved(job, args))


if __name__ == "__main__":
    main()
