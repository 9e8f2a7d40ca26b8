"""W&B's two step axes for a run (``epoch`` and ``global_step``), and an epoch's throughput as W&B names.

W&B keeps one increasing ``_step`` per run; distlearn logs per-epoch numbers and, every
``display_every_n_steps`` optimizer steps, the running loss. Rather than force both onto
``_step``, each metric names its own x axis with ``wandb.define_metric`` (``step_metric``):
``_step`` only counts rows, and neither axis has to increase with the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["define_axes", "throughput_metrics"]


# The epoch-axis metrics, by prefix or name (every key epoch_metrics can give, "epoch" itself aside).
_EPOCH_METRICS = ("train/*", "test/*", "throughput/*", "lr", "samples_per_second", "epoch_time")


def define_axes(run: Any, resumed: bool) -> int | None:
    """Declare the two step axes on a wandb run; return the last ``global_step`` it holds when resumed
    (online W&B restores the summary of a resumed run; offline holds none: None)."""
    run.define_metric("epoch")
    run.define_metric("global_step")
    for name in _EPOCH_METRICS:
        run.define_metric(name, step_metric="epoch")
    run.define_metric("running/*", step_metric="global_step")
    if not resumed:
        return None
    try:
        last = run.summary.get("global_step")
    except Exception:  # a summary W&B cannot read back: log every step rather than none
        return None
    return int(last) if isinstance(last, (int, float)) else None


def throughput_metrics(block: Mapping[str, Any] | None) -> dict[str, Any]:
    """An epoch's ``throughput`` block as flat ``throughput/...`` names (fractions, rates, bytes, MFU)."""
    if not block:
        return {}
    out = {f"throughput/{k}": block.get(k) for k in
           ("tokens_per_second", "achieved_tflops", "mfu", "flops_per_sample", "epoch_seconds", "device_busy")}
    out.update({f"throughput/time/{k}": v for k, v in (block.get("time_split") or {}).items()})
    out.update({f"throughput/memory/{k}": v for k, v in (block.get("peak_memory") or {}).items()})
    return out
