"""``curves.png``: loss, scores and learning rate per epoch (train, validation, test), with the best
validation epoch marked, else the best test epoch (a constant learning rate is said in the title, not drawn).

The best epoch is the summary's (:func:`~distlearn.command.record_numbers.best_epoch`, by the
metric's own ``higher_is_better``), so the picture, the printed summary and ``run.checkpoint.keep_best``
never disagree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..training.records import Record, scores
from .record_numbers import best_epoch, epochs_in_order, finite
from .files import atomic_write

__all__ = ["curves_figure", "write_curves"]

Series = dict[tuple[str, str], list[tuple[int, float]]]  # (panel, "train" | "test" | "lr") -> points


def write_curves(
    path: str | Path,
    record: Record,
    *,
    title: str | None = None,
    higher_is_better: bool | None = True,
) -> Path:
    """Loss, score and learning rate per epoch (train and test) as a PNG.

    Each panel's y axis is labelled; a learning rate that never changes is named in the title
    instead of a panel of its own (a flat line on an axis of rounding noise); a panel whose
    values span more than a decade
    is drawn on a log scale (a first-epoch loss of 28,000 would flatten the rest); the
    best test epoch is marked; the score panel is left out when it repeats the loss
    (an MSE metric next to an MSE loss). Epochs are numbered from 1, as in the summary.

    Args:
        path: The PNG file to write.
        record: The learner's training record.
        title: The run's name, shown on the figure (default: the name of ``path``'s folder).
        higher_is_better: The metric's ``higher_is_better``, as the summary is given it; None (no
            metric): the lowest test loss is marked.

    Returns:
        ``path``.
    """
    fig = curves_figure(record, title=title if title is not None else Path(path).resolve().parent.name,
                        higher_is_better=higher_is_better)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))


def curves_figure(record: Record, *, title: str = "", higher_is_better: bool | None = True) -> Any:
    """The matplotlib ``Figure`` that :func:`write_curves` saves (Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = epochs_in_order(record)
    name = next((e["metric_name"] for _, e in epochs if e.get("metric_name")), None) or "score"  # the primary
    names = list(next((e["train_scores"] for _, e in epochs if e.get("train_scores")), None) or [name])
    series = _all_series(epochs, names)
    scored = [n for n in names if any(series[(n, s)] for s in ("train", "val", "test"))]
    same = name in scored and all(_same(series[("loss", s)], series[(name, s)]) for s in ("train", "test"))
    panels = [("loss", f"loss (= {name})" if same else "loss")]
    panels += [(n, n) for n in scored if not (same and n == name)]
    constant_lr = _constant(series[("lr", "lr")])
    if constant_lr is not None:  # a flat line on an axis of rounding noise says less than the title does
        title = "\n".join(t for t in (title, f"constant learning rate {constant_lr:.4g}") if t)
    elif series[("lr", "lr")]:
        panels.append(("lr", "learning rate"))

    fig = Figure(figsize=(4.4 * len(panels), 3.9 + 0.25 * title.count("\n")), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas, without pyplot's global state or a display
    fig.suptitle(title, fontsize=11)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (kind, label) in zip(axes, panels):
        _draw_panel(ax, kind, label, series)
    on_loss = same or name not in scored or higher_is_better is None
    best = _best_epoch(epochs, None if on_loss else higher_is_better, name)
    if best is not None:
        epoch, value, kind, part = best
        ax = axes[[k for k, _ in panels].index(kind)]
        ax.axvline(epoch, color="0.6", linestyle="--", linewidth=1)
        ax.plot([epoch], [value], marker="*", markersize=12, color="C3", linestyle="none",
                label=f"best {part}: epoch {epoch} ({value:.4g})")
        ax.legend()
    return fig


def _all_series(epochs: list, names: list[str]) -> Series:
    """Every curve: the losses, each metric's train and test scores, the learning rate."""
    series = {
        ("loss", "train"): _series(epochs, lambda e: e.get("train_loss")),
        ("loss", "val"): _series(epochs, lambda e: (e.get("val_result") or {}).get("val_loss")),
        ("loss", "test"): _series(epochs, lambda e: (e.get("test_result") or {}).get("test_loss")),
    }
    for n in names:  # one panel per metric, the primary first
        series[(n, "train")] = _series(epochs, lambda e, n=n: scores(e, "train").get(n))
        series[(n, "val")] = _series(epochs, lambda e, n=n: scores(e.get("val_result") or {}, "val").get(n))
        series[(n, "test")] = _series(epochs, lambda e, n=n: scores(e.get("test_result") or {}, "test").get(n))
    series[("lr", "lr")] = _series(epochs, lambda e: e.get("lr"))
    return series


def _draw_panel(ax: Any, kind: str, label: str, series: Series) -> None:
    """One panel's curves, labels, scale and legend."""
    from matplotlib.ticker import MaxNLocator

    for (k, which), points in series.items():
        if k == kind and points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="." if len(points) < 30 else None, label=which)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs: no 1.5 tick
    ax.set_ylabel(label)
    values = [y for (k, _), pts in series.items() if k == kind for _, y in pts]
    if values and min(values) > 0 and max(values) / min(values) > 10:  # a decade or more
        ax.set_yscale("log")
    if kind != "lr" and ax.has_data():
        ax.legend()


def _best_epoch(epochs: list, higher_is_better: bool | None, name: str) -> tuple[int, float, str, str] | None:
    """The epoch to mark (1-based), its value, its panel and "val" or "test": the summary's
    (:func:`~distlearn.command.record_numbers.best_epoch`): the best validation epoch, else the best
    test epoch; by the score, or by the loss (lowest) when ``higher_is_better`` is None."""
    for part in ("val", "test"):
        best = best_epoch(epochs, part, higher_is_better)
        if best is not None:
            epoch, value, kind = best
            return epoch + 1, value, name if kind == "score" else "loss", part
    return None


def _series(epochs: list, get: Callable[[Mapping[str, Any]], Any]) -> list[tuple[int, float]]:
    """(1-based epoch, finite value) pairs; missing and non-finite values are left out."""
    points = [(i + 1, finite(get(e))) for i, e in epochs]
    return [(x, y) for x, y in points if y is not None]


def _constant(points: list[tuple[int, float]]) -> float | None:
    """The one value of a curve that never changes, else None (no points, or a value that moves)."""
    values = [y for _, y in points]
    if values and all(math.isclose(v, values[0], rel_tol=1e-9) for v in values):
        return values[0]
    return None


def _same(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    """Whether two curves are the same numbers (an MSE score next to an MSE loss)."""
    return len(a) == len(b) and all(x == u and math.isclose(y, v, rel_tol=1e-6, abs_tol=1e-12)
                                    for (x, y), (u, v) in zip(a, b))
