"""The epoch's loss accounting: per-batch losses kept on the device, reduced once per epoch.

:class:`EpochAccounting` records each batch's loss, real size and end time without a
host sync, gives the running loss at a display step (a collective) and the epoch's
numbers at its end (:meth:`EpochAccounting.reduce`, one collective with the metric,
the clocks and the control flags). It owns its checkpoint state, including how the
states of P ranks merge into Q (:meth:`EpochAccounting.merged_state`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..accumulators import Mean, Sum, calculate
from ..accumulators.sequences import step_major
from .control import StopFlags
from .records import EpochRecord
from .scoring import score_fields
from .throughput import epoch_accumulators

__all__ = ["EpochAccounting", "EpochTotals", "NonFiniteLossError", "merged_accumulator_state", "reduce_epoch", "to_device"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite (raised on every rank)."""


@dataclass(frozen=True)
class EpochTotals:
    """What the epoch's one reduction gives, identical on every rank.

    Attributes:
        record: The epoch's record (``lr``, ``optimizer_steps`` and ``test_result`` are the loop's to fill).
        preparation_time_cost: This session's start-up time, averaged over ranks (for ``record["preparation"]``).
        stop: The stop signal any rank received (see :class:`~distlearn.training.control.StopFlags`), or None.
    """

    record: EpochRecord
    preparation_time_cost: float
    stop: int | None
    extra: Mapping[str, Any] | None = None  # the reduced values of reduce()'s ``extra`` accumulators


class EpochAccounting:
    """One pass's per-batch losses (detached tensors, left on the device), real sizes and end times.

    Appending a detached loss costs no kernel and no host sync; sizes and times
    are Python numbers the host already has. Stacked once, at the end (and, for
    the running loss, once per display step: only the batches since the last one).

    Times are read on the pass's training clock (:meth:`now`): the wall clock, less the time the
    run was down. A pass resumed from a checkpoint goes on from the clock reading saved with it, so
    the time between the checkpoint and the restart counts nowhere: the epoch's time is the time
    spent training it before the kill plus after, and no batch time is negative.
    """

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.sizes: list[Any] = []  # each loss's weight: rows (int) or target tokens (0-d tensor, no sync)
        self.rows: list[int] = []
        self.times: list[float] = []
        self._running = Mean()  # the losses of batches [0, _running_upto), for running_loss()
        self._running_upto = 0
        self.skipped_steps = 0  # optimizer steps skipped for a non-finite gradient (nonfinite="skip")
        self.timer: Any = None  # the pass's throughput timer (throughput.EpochTimer), saved with the pass
        self.tokens = False  # whether the weights are target tokens (0-d tensors), kept across a resume
        self.shift = 0.0  # seconds this pass was down (killed until resumed), left out of its clock
        self.agreed: list[int] | None = None  # the last display step's summed control flags (see control.py)
        self.start = self.now()  # when the pass began, on its clock

    def now(self) -> float:
        """The pass's training clock: ``time.time()`` less the seconds the run was down during the pass."""
        return time.time() - self.shift

    def add(self, loss: torch.Tensor, size: Any, rows: int) -> None:
        """One batch: its mean loss, its weight (samples or target tokens) and its real rows."""
        self.losses.append(loss.detach())
        self.tokens = self.tokens or isinstance(size, torch.Tensor)
        self.sizes.append(size)
        self.rows.append(rows)
        self.times.append(self.now())

    def add_skipped(self, loss: torch.Tensor) -> None:
        """A batch whose optimizer step was skipped (nonfinite="skip"): it counts with weight 0."""
        self.add(torch.zeros_like(loss.detach()), 0, 0)

    def state_dict(self) -> dict[str, Any]:
        """The batches so far, for a checkpoint (one stacked tensor: one device copy, no per-batch sync)."""
        return {
            "losses": torch.stack(self.losses).cpu() if self.losses else None,
            "sizes": list(self.sizes),
            "rows": list(self.rows),
            "times": list(self.times),
            "running": self._running.state_dict(),
            "running_upto": self._running_upto,
            "skipped_steps": self.skipped_steps,
            "start": self.start,
            "saved_at": self.now(),  # the clock when saved: a resumed pass goes on from here
            "tokens": self.tokens,
            "timer": None if self.timer is None else self.timer.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device) -> None:
        """Go on with a saved pass; its clock resumes at the reading it was saved with."""
        losses = state["losses"]
        self.losses = [] if losses is None else list(losses.to(device).unbind(0))
        self.sizes, self.rows, self.times = list(state["sizes"]), list(state["rows"]), list(state["times"])
        self._running.load_state_dict(to_device(state["running"], device))
        self._running_upto = int(state["running_upto"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.tokens = bool(state.get("tokens", False))
        if self.timer is not None:
            self.timer.load_state_dict(state.get("timer"))
        # A checkpoint written before the clock was saved: its last batch's time stands for both readings.
        saved_at = state.get("saved_at", self.times[-1] if self.times else None)
        if saved_at is not None:
            self.shift = time.time() - float(saved_at)
            self.start = float(state.get("start", self.times[0] if self.times else saved_at))

    @staticmethod
    def merged_state(states: list[Mapping[str, Any]], rank: int) -> dict[str, Any]:
        """New rank ``rank``'s share of the states ``len(states)`` ranks saved (an elastic resume).

        Per batch, the sample-weighted loss of all saved ranks and their summed count go to rank 0;
        zeros with weight 0 to the others; the running mean's sums to rank 0, zeros elsewhere;
        times and skipped steps as saved by rank 0. The new ranks' reduction then gives what the
        old ranks' would.

        Raises:
            CheckpointError: the saved ranks hold different numbers of batches.
        """
        from .checkpoint import CheckpointError

        first = states[0]
        n = len(first["sizes"])
        if any(len(log["sizes"]) != n for log in states):
            raise CheckpointError(
                f"the saved ranks logged different numbers of batches: {[len(g['sizes']) for g in states]}")
        # (ranks, batches); a token count may be saved as a 0-d tensor
        sizes = torch.tensor([[float(v) for v in log["sizes"]] for log in states], dtype=torch.float64)
        rows = [sum(column) for column in zip(*(log.get("rows", log["sizes"]) for log in states))]
        if n and rank == 0:
            losses = torch.stack([log["losses"].to(torch.float64) for log in states])
            weighted = torch.where(sizes > 0, losses * sizes, torch.zeros_like(losses)).sum(0)
            total = sizes.sum(0)
            # a batch without real samples keeps rank 0's loss with weight 0: it counts for nothing
            merged = torch.where(total > 0, weighted / total.clamp(min=1), losses[0])
            losses_out, sizes_out = merged.to(first["losses"].dtype), [int(v) for v in total.tolist()]
            rows_out = [int(v) for v in rows]  # real samples per batch: the epoch's sample count
        else:
            losses_out = None if first["losses"] is None else torch.zeros_like(first["losses"])
            sizes_out, rows_out = [0] * n, [0] * n
        return {
            **first,
            "losses": losses_out,
            "sizes": sizes_out,
            "rows": rows_out,
            "running": merged_accumulator_state([log["running"] for log in states], rank, None, Mean()),
        }

    def _stacked(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        losses = torch.stack(self.losses[start:stop]).reshape(stop - start)
        sizes = self.sizes[start:stop]
        if all(isinstance(s, int) for s in sizes):
            weights = torch.tensor(sizes, dtype=torch.float64, device=losses.device)
        else:
            weights = torch.stack([torch.as_tensor(s, device=losses.device).double() for s in sizes])
        return losses, weights

    def loss_mean(self) -> Mean:
        """The sample-weighted mean loss: each batch's mean loss weighted by its real size."""
        mean = Mean()
        if self.losses:
            mean.extend(*self._stacked(0, len(self.losses)))
        return mean

    def loss_means(self) -> tuple[Mean, Mean]:
        """``(loss_mean(), batch_loss())``, the batches stacked once for both (once per epoch)."""
        if not self.losses:  # nothing logged on this rank: it contributes zeros of the agreed shape
            return Mean(), Mean()
        losses, weights = self._stacked(0, len(self.losses))
        mean, per_batch = Mean(), Mean()
        mean.extend(losses, weights)
        per_batch(losses, weight=weights)
        return mean, per_batch

    def batch_loss(self, upto: int | None = None) -> Mean:
        """Each batch's loss over all ranks (a vector Mean: elementwise weighted)."""
        mean = Mean()
        losses, weights = self._stacked(0, len(self.losses) if upto is None else upto)
        mean(losses, weight=weights)
        return mean

    def running_loss(self, upto: int, epoch: int) -> float:
        """The global mean loss of the first ``upto`` batches; a collective. Raises on NaN/inf.

        Raises:
            NonFiniteLossError: the loss so far is NaN/inf (on every rank), naming the batch.
        """
        return self._agree_running(upto, epoch, None)[0]

    def running_loss_and_stop(self, upto: int, epoch: int, flags: StopFlags) -> tuple[float, int | None]:
        """:meth:`running_loss`, and the stop signal any rank received (or None), found in the same collective.

        The same collective sets :attr:`agreed`: the summed flags, which also tell the checkpoints whether a
        timed one is due and how many ranks finished their background write.
        """
        return self._agree_running(upto, epoch, flags)

    def _agree_running(self, upto: int, epoch: int, flags: StopFlags | None) -> tuple[float, int | None]:
        if upto > self._running_upto:  # extend with the new batches only: O(steps) per epoch, not O(steps^2)
            self._running.extend(*self._stacked(self._running_upto, upto))
            self._running_upto = upto
        accumulators: dict[str, Any] = {"loss": self._running}
        if flags is not None:
            accumulators["stop"] = flags.pack()
        values = calculate(accumulators)
        value = float(values["loss"])
        if not math.isfinite(value):  # every rank sees the same value: all take this path
            self.raise_if_non_finite(self.batch_loss(upto).calculate().tolist(), epoch)
        if flags is None:
            return value, None
        self.agreed = values["stop"].tolist()
        return value, StopFlags.unpack(values["stop"])

    def reduce(self, metric: Any, epoch: int, preparation: float, flags: StopFlags | None,
               nonfinite: str = "error", extra: Mapping[str, Any] | None = None) -> EpochTotals:
        """All of the epoch's train numbers in ONE collective; identical on every rank.

        Args:
            metric: The epoch's metric (its states ride in the same reduction), or None.
            epoch: The epoch (0-based), for the non-finite loss error.
            preparation: This rank's start-up seconds (averaged over ranks with the clocks).
            flags: This rank's stop flags (the control channel), or None.
            nonfinite: ``"error"`` raises on a NaN/inf batch loss; ``"skip"`` leaves it as null.
            extra: More accumulators to reduce in the same collective (their values in ``EpochTotals.extra``).

        Raises:
            NonFiniteLossError: a batch's loss is NaN/inf with ``nonfinite="error"``.
        """
        end = self.now()
        loss, batch_loss = self.loss_means()
        accumulators: dict[str, Any] = {"loss": loss, "batch_loss": batch_loss, "samples": Sum()}
        accumulators["samples"](sum(self.rows))
        if flags is not None:
            accumulators["stop"] = flags.pack()
        # Clock readings averaged over ranks, so every rank records the same times; a Mean rides in the
        # same all-reduce as the sums (a Max would cost one more collective per epoch).
        accumulators["times"] = Mean()
        accumulators["times"](torch.tensor([preparation, self.start, end, *self.times], dtype=torch.float64))
        if metric is not None:
            accumulators["score"] = metric
        accumulators.update(extra or {})
        values = calculate(accumulators)
        batch_loss = values["batch_loss"].tolist()
        if nonfinite == "error":  # with "skip", a skipped batch's loss is NaN (weight 0 on every rank): left as null
            self.raise_if_non_finite(batch_loss, epoch)
        preparation, start, end, *times = values["times"].tolist()
        name = metric.name if metric is not None else None
        batches = {}
        for i, (t, loss) in enumerate(zip(times, batch_loss)):
            cost = t - (times[i - 1] if i else start)
            batches[i] = {"time": t, "time_cost": cost, "loss": loss, "score": None, "metric_name": name}
        record: EpochRecord = {
            "start_time": start,
            "end_time": end,
            "time_cost": end - start,
            "train_loss": float(values["loss"]),
            **score_fields(metric, values.get("score"), "train"),
            "metric_name": name,
            "samples": int(values["samples"]),
            "samples_per_second": values["samples"] / (end - start) if end > start else None,
            "batch_records": batches,
            "test_result": None,
        }
        stop = StopFlags.unpack(values["stop"]) if flags is not None else None
        return EpochTotals(record, preparation, stop, {k: values[k] for k in extra or ()})

    @staticmethod
    def raise_if_non_finite(batch_loss: list[float], epoch: int) -> None:
        """Raise :class:`NonFiniteLossError` naming the first NaN/inf batch loss, if any."""
        bad = next((i for i, v in enumerate(batch_loss) if not math.isfinite(v)), None)
        if bad is not None:
            raise NonFiniteLossError(
                f"the training loss is {batch_loss[bad]} at epoch {epoch}, step {bad} (0-based batch index in the "
                f"epoch, {len(batch_loss)} batches seen). Lower the learning rate, set max_grad_norm, or check the "
                "data for NaN/inf values."
            )


def reduce_epoch(accounting: EpochAccounting, metric: Any, epoch: int, preparation: float, flags: StopFlags | None,
                 nonfinite: str, rank: int, world: int) -> tuple[EpochTotals, list[str]]:
    """The epoch's one collective: its numbers, the stop flags and the throughput timers and memory peaks
    (whose names come back with the totals)."""
    extra, memory_names = epoch_accumulators(accounting.timer, accounting.sizes, accounting.tokens, rank, world)
    return accounting.reduce(metric, epoch, preparation, flags, nonfinite, extra), memory_names


def merged_accumulator_state(states: list[Mapping[str, Any]], rank: int, world_size: int | None,
                             like: Any) -> dict[str, Any]:
    """One accumulator's state for new rank ``rank``: sums on rank 0 (zeros elsewhere), maxima everywhere.

    List-like states (``{"items": [...]}``) are put in step-major (dataset) order and dealt
    round-robin over ``world_size`` ranks (None: all to rank 0). ``like`` is an accumulator of
    the same kind: its ``_reductions`` say how each state reduces.

    Raises:
        CheckpointError: ``like`` does not say how its states reduce.
    """
    from .checkpoint import CheckpointError

    if "items" in states[0]:  # List / Cat: step-major order, dealt round-robin
        items = step_major([s["items"] for s in states])
        return {"items": items[rank::world_size] if world_size else (items if rank == 0 else [])}
    reductions = getattr(like, "_reductions", None)
    if reductions is None:
        raise CheckpointError(f"cannot merge the states of {type(like).__name__} across process counts")
    present = [s for s in states if s.get("states") is not None]
    if not present:
        return dict(states[0])
    merged = {}
    for name, how in reductions.items():
        stacked = torch.stack([s["states"][name].to(torch.float64).cpu() for s in present])
        if how == "max":
            merged[name] = stacked.max(0).values
        elif rank == 0:
            merged[name] = stacked.sum(0)
        else:
            merged[name] = torch.zeros_like(stacked[0])
    return {**present[0], "states": merged}


def to_device(state: Any, device: torch.device) -> Any:
    """An accumulator's state dict with its tensors on ``device`` (checkpoints load on the CPU)."""
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, Mapping):
        out = {k: to_device(v, device) for k, v in state.items()}
        if "device" in out and isinstance(out["device"], str):
            out["device"] = str(device)
        return out
    return state
