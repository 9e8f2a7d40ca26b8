"""Throughput, where the time went, peak memory and model FLOPs: measured, per epoch, without a host sync per step.

- **Time.** :class:`EpochTimer` adds up, on the host (``time.perf_counter``), the seconds spent
  waiting in the loader's ``next()``, in the training steps and in mid-epoch checkpoints. Nothing
  waits for the device: on a GPU the host runs ahead until the launch queue fills, so its step
  seconds are launch time; there, CUDA events around each step are recorded (no sync) and read
  as ``device_step_seconds`` (kept out of the split: the device computes while the host waits for
  data, so the two overlap). Every ``FOLD_EVERY`` steps the pairs the device has already finished
  are read and let go (``Event.query``: no wait), so an epoch holds a bounded number of events; the
  rest are read once per epoch (:meth:`EpochTimer.fold`).
  The seconds ride in the epoch's one reduction (averaged over ranks) and are saved with a
  mid-epoch checkpoint, so a resumed epoch goes on counting.
- **Memory.** On a GPU ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` (the
  caching allocator's peak of tensors, and of what it holds from the driver), reset at each
  epoch's start; on a CPU the process's peak resident set size since it started
  (``resource.getrusage``). Each is the maximum over ranks, found in the same reduction.
- **FLOPs.** :func:`count_flops` runs one batch forward and backward under
  ``torch.utils.flop_counter.FlopCounterMode`` once per ``train()``: on the unwrapped model in
  eval mode (no dropout mask drawn, no norm statistics updated), gradients by ``torch.autograd.grad``
  (no ``.grad`` touched, no DDP hook fired), the RNG states forked: the run stays bitwise the run
  without it. Achieved TFLOP/s and MFU follow from it and the epoch's real samples and seconds.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..accumulators import Mean, Sum
from ..runtime.peaks import find_peak, precision_of
from .settings import check_learner_options

__all__ = ["SHARDED", "EpochTimer", "Monitor", "add_seconds", "count_flops", "describe", "epoch_accumulators", "epoch_block",
           "flops_per_sample", "peak_tflops", "session_flops", "throughput_block"]

# Where the parameters are sharded: the unwrapped module cannot run alone, so no FLOP count.
SHARDED = ("FSDP", "DEEPSPEED", "MEGATRON_LM")
_PARTS = ("data_wait", "steps", "checkpoints")  # the pass's host-timed parts (evaluation is timed by test())
FOLD_EVERY = 64  # CUDA: steps between reads of the finished events (a query each, never a wait)


@dataclass(frozen=True)
class Monitor:
    """What ``BackwardLearner.train(monitor=...)`` measures and reports besides the loss.

    Attributes:
        peak_tflops: One device's dense peak TFLOP/s for MFU; None takes it from
            :data:`~distlearn.runtime.peaks.PEAKS` where the device is listed (else no MFU).
        measure_flops: Count the model's FLOPs on the session's first batch (one extra forward
            and backward, left out of the epoch's clock).
        on_running_loss: Called on every rank at each ``display_every_n_steps``-th step with
            (global optimizer step, running loss of the epoch so far, learning rate).
    """

    peak_tflops: float | None = None
    measure_flops: bool = True
    on_running_loss: Callable[[int, float, float], None] | None = None

    def __post_init__(self) -> None:
        check_learner_options(peak_tflops=self.peak_tflops)


class EpochTimer:
    """The host seconds of one training pass's parts, and (on CUDA) device events around its steps."""

    def __init__(self, device: torch.device) -> None:
        self.seconds = dict.fromkeys(_PARTS, 0.0)
        self.device_steps = 0.0  # CUDA: the device's seconds of the steps folded so far
        self._events: list[tuple[Any, Any]] = [] if device.type == "cuda" else None  # type: ignore[assignment]
        # Milliseconds of the pairs read since the last fold, summed in step order: the sum fold() made of them all.
        self._read_ms = 0.0
        self.device = device
        if device.type == "cuda":  # this epoch's peak, not the session's
            torch.cuda.reset_peak_memory_stats(device)

    def batches(self, batches: Iterable[Any]) -> Iterator[Any]:
        """The batches, the wait in each ``next()`` added to ``data_wait``."""
        iterator = iter(batches)
        while True:
            began = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            finally:
                self.seconds["data_wait"] += time.perf_counter() - began
            yield batch

    @contextmanager
    def timing(self, part: str) -> Iterator[None]:
        """Add the block's host seconds to ``part``; around a step on CUDA, also record two events (no sync)."""
        events = None
        if part == "steps" and self._events is not None:
            events = (self._event(), self._event())
            events[0].record()
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] += time.perf_counter() - began
            if events is not None:
                events[1].record()
                self._events.append(events)
                if len(self._events) % FOLD_EVERY == 0:
                    self.read_finished()

    @staticmethod
    def _event() -> Any:
        return torch.cuda.Event(enable_timing=True)

    def read_finished(self) -> None:
        """Read and let go of the oldest event pairs the device has finished, without waiting for it.

        A stream finishes its work in order, so they are a prefix: stop at the first pair not done.
        """
        done = 0
        for start, end in self._events:
            if not end.query():
                break
            self._read_ms += start.elapsed_time(end)
            done += 1
        del self._events[:done]

    def fold(self) -> None:
        """Read the recorded CUDA events into ``device_steps``: one wait for the last, once per epoch
        (and before a mid-epoch checkpoint, which syncs anyway)."""
        if self._events:
            self._events[-1][1].synchronize()
            self.read_finished()
        if self._read_ms:
            self.device_steps += self._read_ms / 1000.0
            self._read_ms = 0.0

    def state_dict(self) -> dict[str, float]:
        """The seconds so far, for a mid-epoch checkpoint."""
        self.fold()
        return {**self.seconds, "device_steps": self.device_steps}

    def load_state_dict(self, state: Mapping[str, float] | None) -> None:
        """Go on counting from a checkpoint's seconds (None: a checkpoint written before they were saved)."""
        for key in _PARTS:
            self.seconds[key] = float((state or {}).get(key, 0.0))
        self.device_steps = float((state or {}).get("device_steps", 0.0))


def count_flops(model: nn.Module, forward: Callable[[nn.Module], torch.Tensor]) -> int:
    """The FLOPs of one forward (``forward(model)`` returns the loss) and its backward to the parameters.

    Leaves the model, its gradients and every RNG state as they were (see the module docstring).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    was_training = model.training
    with torch.random.fork_rng(devices=devices):
        model.eval()
        try:
            with FlopCounterMode(display=False) as counter:
                loss = forward(model)
                if params and loss.requires_grad:
                    torch.autograd.grad(loss, params, allow_unused=True)
        finally:
            model.train(was_training)
    return int(counter.get_total_flops())


def flops_per_sample(model: nn.Module, batches: Any, batch: Any, idx: torch.Tensor | None) -> float:
    """:func:`count_flops` of one training batch (``batches``: the learner's BatchRunner), per row of it."""
    rows = []

    def forward(module: nn.Module) -> torch.Tensor:
        step = batches.step(module, batch, idx)
        rows.append(step.rows)
        return step.loss

    # A compiled forward runs eagerly here: dynamo under the counting mode would not compile it, and the
    # training steps must compile it as they would without the count.
    with torch.compiler.set_stance("force_eager"):
        flops = count_flops(model, forward)
    return flops / rows[0] if rows and rows[0] else 0.0


def session_flops(accelerator: Any, model: nn.Module, batches: Any, batch: Any, idx: torch.Tensor | None,
                  accounting: Any) -> float | None:
    """The model's FLOPs per sample on this batch (forward and backward), left out of ``accounting``'s clock;
    None where the parameters are sharded (the unwrapped module holds only this rank's shard)."""
    if accelerator.distributed_type in SHARDED:
        return None
    began = time.time()
    module = accelerator.unwrap_model(model)  # no DDP hook fires; Accelerate's autocast stays
    flops = flops_per_sample(module, batches, batch, idx)
    accounting.shift += time.time() - began
    return flops


def peak_tflops(device: torch.device, mixed_precision: str | None, override: float | None) -> tuple[float, str] | None:
    """One device's dense peak TFLOP/s and where it comes from: the override, the table, or None (unknown)."""
    if override is not None:
        return float(override), "run.peak_tflops"
    if device.type != "cuda":
        return None
    found = find_peak(torch.cuda.get_device_name(device))
    if found is None:
        return None
    name, peak = found
    column = precision_of(mixed_precision, bool(torch.backends.cuda.matmul.allow_tf32))
    value = getattr(peak, column)
    return None if value is None else (value, f"{name} {column}: {peak.source}")


def _peak_memory(device: torch.device) -> dict[str, float]:
    """This rank's peak memory in bytes, by its exact name."""
    if device.type == "cuda":
        return {"cuda_max_memory_allocated": float(torch.cuda.max_memory_allocated(device)),
                "cuda_max_memory_reserved": float(torch.cuda.max_memory_reserved(device))}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {"cpu_peak_rss": float(rss if sys.platform == "darwin" else rss * 1024)}


def epoch_accumulators(timer: EpochTimer, sizes: list[Any], tokens: bool, rank: int,
                       world_size: int) -> tuple[dict[str, Any], list[str]]:
    """What rides in the epoch's reduction: the parts' seconds (mean over ranks), the weights' sum and
    whether they are tokens (sums: exact), and the peak memory (each rank's in its own slot of a sum: the
    maximum over ranks without a second collective). Returns them and the memory figures' names."""
    timer.fold()
    seconds = Mean()
    seconds(torch.tensor([timer.seconds[k] for k in _PARTS] + [timer.device_steps], dtype=torch.float64))
    weight = Sum()
    weight(sum((torch.as_tensor(s, dtype=torch.float64) for s in sizes), torch.zeros((), dtype=torch.float64)))
    memory = _peak_memory(timer.device)
    slots = torch.zeros(len(memory), world_size, dtype=torch.float64)
    slots[:, rank] = torch.tensor(list(memory.values()), dtype=torch.float64)
    peaks, token_flag = Sum(), Sum()
    peaks(slots)
    token_flag(int(tokens))
    return {"tp_seconds": seconds, "tp_weight": weight, "tp_tokens": token_flag, "tp_memory": peaks}, list(memory)


def throughput_block(values: Mapping[str, Any], names: list[str], samples: int, time_cost: float,
                     flops_per_sample: float | None, peak: tuple[float, str] | None,
                     world_size: int) -> dict[str, Any]:
    """The epoch's ``throughput`` record block from the reduced values (evaluation and the epoch-end
    checkpoint are added by :func:`add_seconds`)."""
    data_wait, steps, checkpoints, device_steps = values["tp_seconds"].tolist()
    rate = (lambda n: n / time_cost if time_cost > 0 else None)
    block: dict[str, Any] = {"seconds": {"data_wait": data_wait, "steps": steps, "evaluation": 0.0,
                                         "checkpoints": checkpoints}, "epoch_seconds": time_cost}
    if device_steps:  # CUDA: the device's time in the steps (it overlaps the host's data wait: not in the split)
        block["device_step_seconds"] = device_steps
    if int(values["tp_tokens"]) > 0:
        block["tokens"] = int(values["tp_weight"])
        block["tokens_per_second"] = rate(block["tokens"])
    memory = values["tp_memory"].reshape(len(names), -1).max(dim=1).values.tolist()
    block["peak_memory"] = {name: int(v) for name, v in zip(names, memory)}
    if flops_per_sample is not None:
        block["flops_per_sample"] = flops_per_sample
        achieved = rate(flops_per_sample * samples)
        block["achieved_tflops"] = None if achieved is None else achieved / 1e12
        if peak is not None and achieved is not None:
            block["peak_tflops"], block["peak_source"] = peak
            block["mfu"] = achieved / 1e12 / (peak[0] * world_size)
    add_seconds(block, "evaluation", 0.0)  # the split of the pass alone, until evaluation and checkpoint add theirs
    return block


def epoch_block(summary: dict[str, Any], extra: Mapping[str, Any], memory_names: list[str], flops: float | None,
                peak: Any, world: int) -> dict[str, Any]:
    """The epoch's ``throughput`` block, put in ``summary``; its evaluation time is the validation's and test's."""
    summary["throughput"] = block = throughput_block(
        extra, memory_names, summary["samples"], summary["time_cost"], flops, peak, world)
    for part in ("val_result", "test_result"):
        add_seconds(block, "evaluation", (summary.get(part) or {}).get("time_cost") or 0.0)
    return block


def add_seconds(block: dict[str, Any], part: str, seconds: float) -> None:
    """Add seconds spent outside the training pass (its evaluation, its end-of-epoch checkpoint) to the epoch;
    ``time_split`` holds each part's fraction of ``epoch_seconds`` (the pass and those: at most 1 together)."""
    block["seconds"][part] += seconds
    block["epoch_seconds"] += seconds
    total = block["epoch_seconds"]
    block["time_split"] = {k: (v / total if total > 0 else 0.0) for k, v in block["seconds"].items()}
    if "device_step_seconds" in block:
        block["device_busy"] = block["device_step_seconds"] / total if total > 0 else 0.0


def describe(block: Mapping[str, Any] | None, brief: bool = False) -> str:
    """The block as text: tokens/s, MFU (or TFLOP/s), where the time went and the peak memory for the
    summary; ``brief`` (the epoch's console line): tokens/s, MFU and the share spent waiting for data."""
    if not block:
        return ""
    if brief:
        split = block.get("time_split") or {}
        parts = [f"{block['tokens_per_second']:,.0f} tokens/s" if block.get("tokens_per_second") else "",
                 f"MFU {100 * block['mfu']:.1f}%" if block.get("mfu") is not None else "",
                 f"data wait {100 * split['data_wait']:.0f}%" if "data_wait" in split else ""]
        return ", ".join(p for p in parts if p)
    parts = []
    if block.get("tokens_per_second"):
        parts.append(f"{block['tokens_per_second']:,.0f} tokens/s")
    if block.get("mfu") is not None:
        parts.append(f"MFU {100 * block['mfu']:.1f}%")
    elif block.get("achieved_tflops") is not None:
        parts.append(f"{block['achieved_tflops']:.3g} TFLOP/s")
    split = block.get("time_split") or {}
    parts.append(", ".join(f"{name.replace('_', ' ')} {100 * split[key]:.0f}%" for key, name in
                           (("data_wait", "data"), ("steps", "steps"), ("evaluation", "eval"),
                            ("checkpoints", "ckpt")) if key in split))
    memory = block.get("peak_memory") or {}
    for key, value in memory.items():
        parts.append(f"{key} {value / 2**30:.2f} GiB")
    return "; ".join(p for p in parts if p)
