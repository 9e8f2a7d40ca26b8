"""The training loop's steps: what a run carries, the optimizer and scheduler steps, the non-finite checks,
the epoch's batches and log line."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.utils import DistributedType
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from tqdm.auto import tqdm

from ..metrics import Metric, Metrics
from ..runtime.skipping import batches_after
from .batches import BatchRunner, BatchResult, give_ignore_index
from .checkpoint import Checkpoints
from .control import StopFlags
from .epoch import EpochAccounting, to_device
from .records import EpochRecord, scores
from .scoring import model_scores
from .throughput import EpochTimer, Monitor, describe

__all__ = [
    "DirectSteps", "TrainRun", "account_batch", "backward", "batches_after", "begin_epoch", "describe_epoch", "display",
    "epoch_batches", "finite_gradients", "finite_loss", "last_batch", "optimizer_step", "step_scheduler_per_epoch", "stepper",
]

logger = logging.getLogger(__name__)


@dataclass
class TrainRun:
    """What one ``train()`` call prepared, and what its loop carries from batch to batch."""

    accelerator: Accelerator
    model: nn.Module
    optimizer: Any
    scheduler: Any
    loader: Any
    batches: BatchRunner
    metric: Metric | Metrics | None
    keep_ignored: bool  # token targets reach the metric with the ignored tokens in (it masks them itself)
    train_idx: torch.Tensor | None
    checkpoints: Checkpoints | None
    nonfinite: str
    stepper: Any = None  # what optimizer_step calls: the optimizer, or DirectSteps around it (see stepper())
    lr: float = 0.0  # the learning rate of the last batch's step
    bar: Any = None  # the epoch's progress bar (None where it is not shown)

    @property
    def direct(self) -> bool:
        """Whether Accelerate's optimizer wrapper and backward are provably idle here (see :func:`stepper`)."""
        return isinstance(self.stepper, DirectSteps)

    def stop_flags(self) -> StopFlags:
        """This rank's stop flags (none without checkpoints: nothing to stop with)."""
        if self.checkpoints is None:
            return StopFlags.received(None)
        return self.checkpoints.stop_flags(self.accelerator.is_main_process)


def begin_epoch(run: TrainRun, epoch: int, resumed: Mapping[str, Any] | None) -> tuple[EpochAccounting, int]:
    """Fresh accounting and metric for the epoch, or the saved partial ones; returns (accounting, batches done).

    The epoch's clock starts here (a resumed epoch's goes on from where its checkpoint read it).
    """
    run.loader.set_epoch(epoch)  # the shuffle depends only on (seed, epoch): resumable
    run.model.train()
    accounting = EpochAccounting()
    accounting.timer = EpochTimer(run.accelerator.device)
    if run.metric is not None:
        run.metric.reset()
    if resumed is None or not resumed["batches_done"]:
        return accounting, 0
    accounting.load_state_dict(resumed["log"], run.accelerator.device)
    if run.metric is not None and resumed["metric"] is not None:
        run.metric.load_state_dict(to_device(resumed["metric"], run.accelerator.device))
    return accounting, int(resumed["batches_done"])


def display(run: TrainRun, accounting: EpochAccounting, done: int, epoch: int, step: int, monitor: Monitor) -> int | None:
    """The running loss on the progress bar and to ``monitor.on_running_loss`` (``step``: the optimizer steps
    taken); a collective, on every rank, that also tells every rank whether one was signalled to stop.
    Returns that signal, or None."""
    running, signalled = accounting.running_loss_and_stop(done, epoch, run.stop_flags())
    if run.checkpoints is not None:  # a timed checkpoint due, a background write to commit
        run.checkpoints.agreed(accounting.agreed, run.accelerator)
    if run.bar is not None:
        run.bar.set_postfix(loss=f"{running:.4g}", lr=f"{run.lr:.3g}", refresh=False)
    if monitor.on_running_loss is not None:
        monitor.on_running_loss(step, running, float(run.lr))
    return signalled


def epoch_batches(loader: Any, epoch: int, n_epochs: int, done: int, show_bar: bool,
                  saved: Any = None) -> tuple[Iterable[Any], Any]:
    """The epoch's batches after the first ``done``, and its progress bar (None when not shown).

    The first ``done`` are skipped without fetching their samples where the loader allows it
    (:func:`~distlearn.runtime.skipping.batches_after`; the main process warns where they are read);
    ``saved`` is a stateful iterable data set's position at the checkpoint, loaded instead.
    A bar only where it is shown: building even a disabled one costs per epoch. It is 1-based
    like the log lines, and left on screen only while the epoch runs (one line per epoch stays).
    """
    batches = batches_after(loader, done, logger.warning if PartialState().is_main_process else None, saved)
    if not show_bar:
        return batches, None
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{n_epochs}", initial=done, total=len(loader), leave=False)
    return bar, bar


def account_batch(result: BatchResult, accounting: EpochAccounting, metric: Metric | None, loss: Any) -> None:
    """Record one training batch's loss and metric on its real samples only (local, no sync).

    On the last batch, Accelerate trained on repeated samples too; ``report`` holds only
    the real ones (with no real sample: weight 0, so it counts for nothing). ``loss`` is the
    learner's (it decides how outputs become scores).
    """
    accounting.add(result.loss, result.weight, result.rows)
    if result.scores is not None and metric is not None:
        if result.ignored is not None:  # every token, the ignored ones too: the metric leaves them out
            give_ignore_index(metric, result.ignored)  # (learner's copy; the same numbers as masking)
        metric.update(y_score=model_scores(loss, result.scores), y_true=result.target)


def step_scheduler_per_epoch(scheduler: Any, summary: Mapping[str, Any]) -> None:
    """The epoch's scheduler step; ReduceLROnPlateau gets the global validation loss where there is a
    validation split (deciding on the test data would leak it), else the test loss, else the train loss."""
    if not isinstance(scheduler.scheduler, ReduceLROnPlateau):
        scheduler.step()
        return
    part = "val" if summary.get("val_result") else "test"
    result = summary.get(f"{part}_result")
    loss = None if result is None else result[f"{part}_loss"]
    scheduler.step(loss if loss is not None else summary["train_loss"])


class DirectSteps:
    """``AcceleratedOptimizer.step`` and ``zero_grad`` without the work that is provably idle here.

    Used only where :func:`stepper` proved it idle: no GradScaler (no fp16 skip detection), not
    XLA, an ``AcceleratedOptimizer`` exactly (not DeepSpeed's or another subclass), not a LOMO
    optimizer. What is left is the wrapper's own rule: step and zero the gradients only at an
    accumulation boundary (``sync_gradients``), ``set_to_none=True`` where accepted. What is cut
    per step: two ``is_lomo_available()`` file-system lookups (uncached in Accelerate) in ``step``
    and an ``inspect.signature`` in ``zero_grad`` (decided once here).
    """

    def __init__(self, accelerated: AcceleratedOptimizer) -> None:
        self.optimizer = accelerated.optimizer
        self.gradient_state = accelerated.gradient_state
        accepts = "set_to_none" in inspect.signature(self.optimizer.zero_grad).parameters
        self._zero_kwargs = {"set_to_none": True} if accepts else {}

    def step(self) -> None:
        if self.gradient_state.sync_gradients:
            self.optimizer.step()

    def zero_grad(self) -> None:
        if self.gradient_state.sync_gradients:
            self.optimizer.zero_grad(**self._zero_kwargs)


# Where Accelerate's optimizer wrapper or backward does work of its own.
_OWN_STEPS = (DistributedType.XLA, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM)


def stepper(accelerator: Accelerator, optimizer: Any) -> Any:
    """What :func:`optimizer_step` steps: :class:`DirectSteps` where Accelerate's wrapper does nothing
    more, else the prepared optimizer itself (fp16's skip detection, XLA, DeepSpeed, LOMO, ...)."""
    if (type(optimizer) is not AcceleratedOptimizer or optimizer.scaler is not None or accelerator.scaler is not None
            or accelerator.distributed_type in _OWN_STEPS
            or type(optimizer.optimizer).__module__.split(".")[0] == "lomo_optim"):
        return optimizer
    return DirectSteps(optimizer)


def backward(accelerator: Accelerator, loss: torch.Tensor, direct: bool) -> None:
    """``accelerator.backward(loss)``; ``direct`` (its work proved idle by :func:`stepper`: no GradScaler,
    no DeepSpeed or Megatron) does the same division by the accumulation steps and ``loss.backward()``
    itself. Dividing by 1 is skipped: it is exact (the loss and its gradient bitwise unchanged), and
    Accelerate pays a kernel, an autograd node and a context-manager object for it every step."""
    if not direct:
        accelerator.backward(loss)
        return
    steps = accelerator.gradient_accumulation_steps
    (loss / steps if steps != 1 else loss).backward()


def optimizer_step(accelerator: Accelerator, model: nn.Module, optimizer: Any, nonfinite: str) -> bool:
    """``optimizer.step()`` and ``zero_grad()`` (no-ops between accumulation boundaries).

    With ``nonfinite="skip"``, a step whose gradients hold a NaN/inf is skipped; returns True then.
    The gradients are all-reduced first, so a NaN on any rank is one on every rank: all skip together.
    """
    skip = nonfinite == "skip" and accelerator.sync_gradients and not finite_gradients(model)
    if not skip:
        optimizer.step()
    optimizer.zero_grad()
    return skip


def finite_loss(loss: torch.Tensor) -> bool:
    """Whether the loss is finite (one host sync; only with nonfinite="skip")."""
    return bool(torch.isfinite(loss.detach()).all())


def finite_gradients(model: nn.Module) -> bool:
    """Whether every gradient is finite (one host sync; only with nonfinite="skip")."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


def last_batch(accelerator: Accelerator) -> bool:
    """Whether the batch just trained on is the loader's last of the epoch."""
    return bool(accelerator.gradient_state.end_of_dataloader)


def describe_epoch(epoch: int, n_epochs: int, summary: EpochRecord) -> str:
    """The log line of an epoch (1-based, as a person reads it)."""
    text = f"epoch {epoch + 1}/{n_epochs}: train_loss {summary['train_loss']:.6g}"
    for name, value in scores(summary, "train").items():
        text += f", train_{name} {_number(value)}"
    for part, result in (("val", summary.get("val_result")), ("test", summary["test_result"])):
        if result is None:
            continue
        if result[f"{part}_loss"] is not None:
            text += f", {part}_loss {result[f'{part}_loss']:.6g}"
        for name, value in scores(result, part).items():
            text += f", {part}_{name} {_number(value)}"
    text += f", lr {summary['lr']:.4g}, {summary['samples_per_second'] or 0:.0f} samples/s"
    measured = describe(summary.get("throughput"), brief=True)
    return text + (f", {measured}" if measured else "")


def _number(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, (int, float)) else "[...]"  # e.g. a ConfusionMatrix
