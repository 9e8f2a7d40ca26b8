"""The summary printed at the end of ``distlearn train``: what ran, its numbers, where its files went."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..training.records import Record, scores
from ..training.throughput import describe
from .record_numbers import best_epoch, epochs_in_order, finite

__all__ = ["summary_text"]


def summary_text(
    record: Record,
    *,
    output_dir: str | Path,
    title: str,
    files: list[Path],
    tracking: str,
    wall_time: float,
    higher_is_better: bool | None = True,
) -> str:
    """A short readable summary of a run; its last line names the output folder.

    Args:
        record: The learner's training record.
        output_dir: The run's folder.
        title: What was trained, e.g. ``"digits: MLP (18.6k parameters), 2 processes on cpu"``.
        files: The files written.
        tracking: One line on where the tracked run went.
        wall_time: Seconds from start to finish of the command (this session's, when it resumed a run).
        higher_is_better: The metric's ``higher_is_better`` (None: no metric, no best line); curves.png
            is given the same, so both name the same best epoch.

    Returns:
        The summary, lines joined by newlines.
    """
    epochs = epochs_in_order(record)
    lines = [f"distlearn train: {title}"]
    if epochs:
        last_epoch, last = epochs[-1]
        name = last.get("metric_name") or "score"
        lines.append(f"  epochs     {_time_line(record, epochs, wall_time)}")
        lines.append(f"  train      {_numbers(last.get('train_loss'), scores(last, 'train'))}")
        for part in ("val", "test"):
            done = [(i, e[f"{part}_result"]) for i, e in epochs if e.get(f"{part}_result")]
            if done:
                i, result = done[-1]
                lines.append(f"  {part:<10} {_numbers(result.get(f'{part}_loss'), scores(result, part))}"
                             + (f" (epoch {i + 1})" if i != last_epoch else ""))
        lines += _best_line(epochs, name, higher_is_better)
        if record.get("stopped_early"):
            lines.append(f"  stopped    early, after epoch {int(record['stopped_epoch']) + 1} (run.early_stopping)")
        lines.append(f"  lr         {_fmt(last.get('lr'))} at the end")
        if last.get("throughput"):
            lines.append(f"  throughput {describe(last['throughput'])} (epoch {last_epoch + 1})")
    lines.append(f"  tracking   {_short_tracking(tracking, output_dir)}")
    kept = ", best/" if (Path(output_dir) / "best").is_dir() else ""  # run.checkpoint.keep_best
    lines.append(f"  files      {', '.join(p.name for p in files)}{kept}")
    lines.append(f"Output directory: {output_dir}")
    return "\n".join(lines)


def _best_line(epochs: list[tuple[int, Mapping[str, Any]]], name: str, higher_is_better: bool | None) -> list[str]:
    """The best validation epoch (the one keep_best keeps: the primary score, or the loss without a
    metric), else, without a validation split, the best test epoch by the metric; [] when none."""
    chosen = best_epoch(epochs, "val", higher_is_better)
    if chosen is not None:
        i, value, kind = chosen
        return [f"  best val   {name if kind == 'score' else 'loss'} {value:.4f} at epoch {i + 1}"]
    tested = [i for i, e in epochs if e.get("test_result") and finite(e["test_result"].get("test_score")) is not None]
    chosen = best_epoch(epochs, "test", higher_is_better) if higher_is_better is not None and len(tested) > 1 else None
    return [] if chosen is None else [f"  best test  {name} {chosen[1]:.4f} at epoch {chosen[0] + 1}"]


def _time_line(record: Mapping[str, Any], epochs: list[tuple[int, Mapping[str, Any]]], wall_time: float) -> str:
    """``3 in 12.1 s of training, 14.0 s in all (5,210 samples/s)``: the rate is every sample over every
    epoch's time. A resumed run's record holds the epochs of earlier sessions too: the wall time is then
    said to be this session's, with where it resumed."""
    timed = [(finite(e.get("time_cost")), e.get("samples")) for _, e in epochs]
    timed = [(t, n) for t, n in timed if t is not None and t > 0 and isinstance(n, int)]
    train_time = sum(finite(e.get("time_cost")) or 0.0 for _, e in epochs)
    rate = sum(n for _, n in timed) / sum(t for t, _ in timed) if timed else None
    speed = f" ({rate:,.0f} samples/s)" if rate is not None else ""
    resumed = (record.get("preparation") or {}).get("resumed_from")
    if not resumed:
        return f"{len(epochs)} in {train_time:.1f} s of training, {wall_time:.1f} s in all{speed}"
    epoch, done = int(resumed.get("epoch", 0)), int(resumed.get("batches_done") or 0)
    where = f"in epoch {epoch + 1} after batch {done}" if done else f"after epoch {epoch}"
    return (f"{len(epochs)} in {train_time:.1f} s of training{speed}; "
            f"this session resumed {where} and took {wall_time:.1f} s in all")


def _short_tracking(text: str, output_dir: str | Path) -> str:
    """The tracking line without repeats: the reason in parentheses dropped when the line is long, a
    path given twice kept once, and paths inside the run folder written relative to it (the last
    line of the summary names that folder)."""
    if len(text) > 80:
        text = re.sub(r" \((?:[^()]|\([^()]*\))*\)", "", text, count=1)  # "(no W&B credentials (...))"
    paths = re.findall(r"(/[^\s;()]+)", text)
    for p in {p for p in paths if paths.count(p) > 1}:
        text = text.replace(f": {p};", ";", 1)  # "...: P; upload with: wandb sync P" -> "...; upload with: ... P"
    root = str(output_dir).rstrip("/") + "/"
    if root in text:
        text = text.replace(root, "") + " (from the output directory)"
    return text


def _fmt(value: Any) -> str:
    number = finite(value)
    return "n/a" if number is None else f"{number:.4g}"


def _numbers(loss: Any, scores: Mapping[str, Any]) -> str:
    """``loss 0.1234, acc 0.9800, f1 0.9700``: the loss and every finite scalar score."""
    text = f"loss {_fmt(loss)}"
    return text + "".join(f", {n} {finite(v):.4f}" for n, v in scores.items() if finite(v) is not None)
