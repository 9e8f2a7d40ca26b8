"""The training record: one typed structure that every reader shares.

``BackwardLearner.train`` returns a :class:`Record`; the console line, the W&B
tracker, ``record.json``, the summary and ``curves.png`` all read its
:class:`EpochRecord` entries, so a field is renamed in one place. Epochs are
0-based keys here and 1-based wherever a person reads them (log lines, the
progress bar, "best at epoch N", the curves' x axis). Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypedDict

__all__ = ["CHOICE_KEYS", "BatchRecord", "EpochRecord", "Record", "TestResult", "ThroughputRecord", "scores"]


class TestResult(TypedDict, total=False):
    """What ``test()`` returns (and ``EpochRecord.test_result`` holds)."""

    test_loss: float | None  # the sample- (or token-) weighted mean loss over every test sample once
    test_score: Any  # the primary metric's value (a float; a tensor for a ConfusionMatrix)
    test_scores: dict[str, Any]  # every metric's value by its short name
    time_cost: float
    metric_name: str | None  # the primary metric's name
    y_pred: list[Any]  # with return_full_result: every test sample once, in dataset order
    y_true: list[Any]
    y_score: list[Any] | None


class BatchRecord(TypedDict):
    time: float
    time_cost: float
    loss: float  # this batch's loss over all ranks
    score: None
    metric_name: str | None


class ThroughputRecord(TypedDict, total=False):
    """An epoch's measurements (``training/throughput.py``): timings, not compared between runs."""

    seconds: dict[str, float]  # data_wait, steps, evaluation, checkpoints (mean over ranks; see the README)
    epoch_seconds: float  # the training pass (time_cost) plus its evaluation and its end-of-epoch checkpoint
    time_split: dict[str, float]  # each of ``seconds`` as a fraction of epoch_seconds (sum <= 1)
    device_step_seconds: float  # CUDA only: the device's time in the steps (CUDA events)
    device_busy: float  # CUDA only: device_step_seconds / epoch_seconds
    tokens: int  # token labels only: the target tokens trained on (ignore_index left out), all ranks
    tokens_per_second: float | None  # tokens / time_cost
    peak_memory: dict[str, int]  # bytes, max over ranks: cuda_max_memory_allocated and
                                 # cuda_max_memory_reserved, or cpu_peak_rss (the process's peak since start)
    flops_per_sample: float  # the model's forward + backward FLOPs per sample, counted once
    achieved_tflops: float | None  # flops_per_sample * samples / time_cost, all processes together
    peak_tflops: float  # one device's dense peak used for MFU
    peak_source: str  # where that peak comes from
    mfu: float  # achieved_tflops / (peak_tflops * processes)


class EpochRecord(TypedDict, total=False):
    """One epoch of ``Record.training``: identical on every rank."""

    start_time: float
    end_time: float
    time_cost: float
    train_loss: float
    train_score: Any  # the primary metric's value, or None without a metric
    train_scores: dict[str, Any]  # every metric's value by its short name
    metric_name: str | None
    lr: float
    samples: int  # real samples trained on (Accelerate's padding repeats left out)
    samples_per_second: float | None
    optimizer_steps: int  # optimizer steps taken since the start of training
    skipped_steps: int  # with nonfinite="skip" only
    batch_records: dict[int, BatchRecord]
    test_result: TestResult | None
    val_result: dict[str, Any]  # with a val_loader, when evaluated: val_loss, val_score, val_scores, time_cost,
                                # metric_name (test()'s fields, on the validation split)
    throughput: ThroughputRecord


class Record(TypedDict, total=False):
    """What ``BackwardLearner.train`` returns; ``distlearn train`` adds ``status`` in record.json."""

    preparation: dict[str, Any]  # this session's start-up times; after a resume also resumed_from
                                 # ({"epoch", "batches_done", "optimizer_step"})
    training: dict[int, EpochRecord]
    status: Literal["completed", "interrupted"]
    best_epoch: int | None  # with a val_loader: the best validation epoch (0-based), see training/selection.py
    best_score: float | None  # its score: the primary metric's validation value, or the validation loss
    best_metric: str  # that score's name ("loss" without a metric)
    stopped_early: bool  # with early stopping: whether it stopped before n_epochs
    stopped_epoch: int  # when it did: the last epoch trained (0-based)


# The record's top-level keys that say what the validation chose (W&B's run summary gets them too).
CHOICE_KEYS = ("best_epoch", "best_score", "best_metric", "stopped_early", "stopped_epoch")


def scores(part: Mapping[str, Any], which: Literal["train", "test", "val"]) -> dict[str, Any]:
    """Every metric's value by name in an epoch record (``which="train"``), a test result (``"test"``)
    or a validation result (``"val"``).

    Records written before ``*_scores`` existed hold only the primary's ``*_score``.
    """
    if part.get(f"{which}_scores") is not None:
        return dict(part[f"{which}_scores"])
    value = part.get(f"{which}_score")
    return {} if value is None else {part.get("metric_name") or "score": value}
