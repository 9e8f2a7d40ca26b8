"""A run's output folder: choosing it safely, the files written there, and the printed summary.

    runs/digits-20260101-120000/
        config.yaml        the resolved config (file + overrides + defaults, output_dir filled in)
        record.json        the learner's training record (per epoch: losses, scores, lr, times, test result)
        model.safetensors  the final weights (the unwrapped model's state dict)
        curves.png         loss, score and lr per epoch, train and test
        wandb/             the W&B run files when tracking is on (unless WANDB_DIR is set)

Only the main process calls the functions that touch the file system. Every
file is written to a temporary name in the same folder and renamed into place
(``os.replace`` is atomic), so a crash never leaves a half-written output.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from ..training.records import Record, scores

__all__ = [
    "OUTPUT_FILES",
    "OutputDirError",
    "atomic_write",
    "default_output_dir",
    "finite",
    "prepare_output_dir",
    "summary_text",
    "write_outputs",
]

OUTPUT_FILES = ("config.yaml", "record.json", "model.safetensors", "curves.png")
INCOMPLETE = "OUTPUTS_INCOMPLETE"  # present only while write_outputs replaces the set


class OutputDirError(FileExistsError):
    """The output folder holds an earlier run and ``run.overwrite`` is false (or it cannot be used)."""


def default_output_dir(config_path: str | Path | None = None, now: datetime | None = None) -> Path:
    """``runs/<config name>-<YYYYmmdd-HHMMSS>``, the output folder when ``run.output_dir`` is null.

    Every process of a run must use the same folder: compute it on the main process and
    broadcast it (the clock can tick between ranks).

    Args:
        config_path: The config given on the command line (None: the default config).
        now: The time to stamp; defaults to now.
    """
    from ..experiment.config import DEFAULT_CONFIG_NAME

    name = Path(config_path).stem if config_path is not None else DEFAULT_CONFIG_NAME
    return Path("runs") / f"{name}-{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}"


def prepare_output_dir(
    output_dir: str | Path | None,
    overwrite: bool,
    config_path: str | Path | None = None,
    now: datetime | None = None,
    resumable: bool = False,
) -> Path:
    """Choose and create the run's output folder, refusing to mix with an earlier run.

    Call it on the main process only, before training, and share the result
    with the other ranks (a timestamped default differs between clocks).

    Args:
        output_dir: ``run.output_dir``; None for ``runs/<config name>-<time>`` (with
            ``-2``, ``-3``, ... appended if that folder exists already).
        overwrite: ``run.overwrite``: allow a named folder that is not empty; its
            output files are replaced, other files are left as they are.
        config_path: The config given on the command line (names the default folder).
        now: The time to stamp the default folder with (default: now).
        resumable: The run may continue an earlier one (``run.resume`` is not ``none``): a
            folder holding a complete checkpoint, or only what a run leaves before its first
            one (``checkpoints/``, ``wandb/``), is used as it is.

    Returns:
        The folder, created, as an absolute path.

    Raises:
        OutputDirError: The named folder is not empty and ``overwrite`` is false, or
            the path exists and is not a folder.
    """
    if output_dir is None:
        base = default_output_dir(config_path, now)
        path, n = base, 1
        while path.exists():  # two runs started within the same second: never share a folder
            n += 1
            path = base.with_name(f"{base.name}-{n}")
    else:
        path = Path(output_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"run.output_dir {str(path)!r} exists and is not a folder; choose another path.")
    if path.is_dir() and not overwrite:
        existing = sorted(p.name for p in path.iterdir())
        if resumable and _resumable(path, existing):
            existing = []
        if existing:
            shown = ", ".join(existing[:6]) + (", ..." if len(existing) > 6 else "")
            if not set(existing) & {*OUTPUT_FILES, INCOMPLETE, "checkpoints", "wandb"}:  # nothing a run writes
                raise OutputDirError(
                    f"run.output_dir {str(path)!r} is not empty and holds no distlearn run ({shown}). Nothing was "
                    f"changed. Choose a new or empty folder (run.output_dir=...), or write the run into it beside "
                    f"its files with run.overwrite=true."
                )
            raise OutputDirError(
                f"run.output_dir {str(path)!r} already holds an earlier run ({shown}). Nothing was changed. "
                f"Choose a new folder (run.output_dir=...) or replace its outputs with run.overwrite=true."
            )
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def _resumable(path: Path, entries: list[str]) -> bool:
    """Whether a run folder can be continued: it holds a complete checkpoint, or no output yet."""
    from ..training.checkpoint import latest

    return set(entries) <= {"checkpoints", "wandb"} or latest(path) is not None


def remove_if_unused(path: str | Path) -> None:
    """Remove a run folder that holds no file at all (left by a start that failed), else nothing."""
    path = Path(path)
    if path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write a file through a temporary name in the same folder, then rename it into place.

    Args:
        path: The final file.
        write: Writes the content to the temporary path it is given.

    Returns:
        ``path``. If ``write`` raises, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    # A unique name next to the target (same file system, so the rename is atomic); created by `write`
    # with the usual permissions (mkstemp would make it owner-only).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # some writers (safetensors) create owner-only files
        os.replace(tmp, path)  # atomic on POSIX and Windows: readers see the old file or the new one
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_outputs(
    output_dir: str | Path,
    config: Mapping[str, Any],
    record: Mapping[str, Any],
    state_dict: Mapping[str, Any],
) -> list[Path]:
    """Write config.yaml, record.json, model.safetensors and curves.png (main process only).

    Args:
        output_dir: The folder from :func:`prepare_output_dir`.
        config: The resolved config as a plain dict.
        record: The learner's training record.
        state_dict: The final model weights (``accelerator.get_state_dict(model)``).

    Returns:
        The paths written.

    The four files are replaced as one set: ``OUTPUTS_INCOMPLETE`` exists in the folder while
    they are being replaced, so a kill in between leaves a folder that says it is incomplete.
    """
    out = Path(output_dir)
    marker = out / INCOMPLETE
    atomic_write(marker, lambda tmp: tmp.write_text("the outputs are being replaced; a kill left a mix of two sets\n"))
    files = [
        write_config(out / "config.yaml", config),
        write_record(out / "record.json", record),
        write_model(out / "model.safetensors", state_dict),
        write_curves(out / "curves.png", record),
    ]
    marker.unlink()
    return files


def write_config(path: str | Path, config: Mapping[str, Any]) -> Path:
    """The resolved config as YAML; ``distlearn train <path>`` runs it again."""
    from omegaconf import OmegaConf

    text = OmegaConf.to_yaml(OmegaConf.create(dict(config)))
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_record(path: str | Path, record: Mapping[str, Any]) -> Path:
    """The training record as strict JSON: NaN/inf become null, tensors become numbers."""
    text = json.dumps(to_jsonable(record), indent=1, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_model(path: str | Path, state_dict: Mapping[str, Any]) -> Path:
    """The weights as safetensors (load with ``safetensors.torch.load_model(model, path)``)."""
    from safetensors.torch import save_file

    # Own, contiguous CPU copies: safetensors refuses tensors that share memory (tied weights).
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def write_curves(
    path: str | Path,
    record: Record,
    *,
    title: str | None = None,
    higher_is_better: bool | None = None,
) -> Path:
    """Loss, score and learning rate per epoch (train and test) as a PNG.

    Each panel's y axis is labelled; a panel whose values span more than a decade
    is drawn on a log scale (a first-epoch loss of 28,000 would flatten the rest); the
    best test epoch is marked; the score panel is left out when it repeats the loss
    (an MSE metric next to an MSE loss). Epochs are numbered from 1, as in the summary.

    Args:
        path: The PNG file to write.
        record: The learner's training record.
        title: The run's name, shown on the figure (default: the name of ``path``'s folder).
        higher_is_better: Whether a higher test score is better (default: from the metric's name).

    Returns:
        ``path``.
    """
    fig = curves_figure(record, title=title if title is not None else Path(path).resolve().parent.name,
                        higher_is_better=higher_is_better)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))


def curves_figure(record: Record, *, title: str = "", higher_is_better: bool | None = None) -> Any:
    """The matplotlib ``Figure`` that :func:`write_curves` saves (Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = _epochs(record)
    name = next((e["metric_name"] for _, e in epochs if e.get("metric_name")), None) or "score"  # the primary
    names = list(next((e["train_scores"] for _, e in epochs if e.get("train_scores")), None) or [name])
    series = {
        ("loss", "train"): _series(epochs, lambda e: e.get("train_loss")),
        ("loss", "test"): _series(epochs, lambda e: (e.get("test_result") or {}).get("test_loss")),
    }
    for n in names:  # one panel per metric, the primary first
        series[(n, "train")] = _series(epochs, lambda e, n=n: scores(e, "train").get(n))
        series[(n, "test")] = _series(epochs, lambda e, n=n: scores(e.get("test_result") or {}, "test").get(n))
    series[("lr", "lr")] = _series(epochs, lambda e: e.get("lr"))
    scored = [n for n in names if any(series[(n, s)] for s in ("train", "test"))]
    same = name in scored and all(_same(series[("loss", s)], series[(name, s)]) for s in ("train", "test"))
    panels = [("loss", f"loss (= {name})" if same else "loss")]
    panels += [(n, n) for n in scored if not (same and n == name)]
    panels.append(("lr", "learning rate"))
    has_score = name in scored

    fig = Figure(figsize=(4.4 * len(panels), 3.9), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas, without pyplot's global state or a display
    fig.suptitle(title, fontsize=11)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (kind, label) in zip(axes, panels):
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
    best = _best_epoch(series, name, same or not has_score, higher_is_better)
    if best is not None:
        epoch, value, kind = best
        ax = axes[[k for k, _ in panels].index(kind)]
        ax.axvline(epoch, color="0.6", linestyle="--", linewidth=1)
        ax.plot([epoch], [value], marker="*", markersize=12, color="C3", linestyle="none",
                label=f"best test: epoch {epoch} ({value:.4g})")
        ax.legend()
    return fig


# Metric names for which lower is better (the rest, e.g. accuracy and F1, are higher-is-better).
_LOWER_IS_BETTER = ("loss", "mse", "mae", "rmse", "error", "perplexity")


def _best_epoch(
    series: Mapping[tuple[str, str], list[tuple[int, float]]], name: str, on_loss: bool, higher_is_better: bool | None
) -> tuple[int, float, str] | None:
    """The best test epoch (1-based), its value and the panel to mark it on: the test score's,
    else the test loss's (lowest)."""
    kind = "loss" if on_loss else name
    points = series[(kind, "test")]
    if not points:
        return None
    if kind != "loss":
        higher = higher_is_better if higher_is_better is not None else name.lower() not in _LOWER_IS_BETTER
    else:
        higher = False
    epoch, value = (max if higher else min)(points, key=lambda p: p[1])
    return epoch, value, kind


def _series(epochs: list, get: Callable[[Mapping[str, Any]], Any]) -> list[tuple[int, float]]:
    """(1-based epoch, finite value) pairs; missing and non-finite values are left out."""
    points = [(i + 1, finite(get(e))) for i, e in epochs]
    return [(x, y) for x, y in points if y is not None]


def _same(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    """Whether two curves are the same numbers (an MSE score next to an MSE loss)."""
    return len(a) == len(b) and all(x == u and math.isclose(y, v, rel_tol=1e-6, abs_tol=1e-12)
                                    for (x, y), (u, v) in zip(a, b))


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
        higher_is_better: Whether a higher test score is better (None: no metric).

    Returns:
        The summary, lines joined by newlines.
    """
    epochs = _epochs(record)
    lines = [f"distlearn train: {title}"]
    if epochs:
        last_epoch, last = epochs[-1]
        name = last.get("metric_name") or "score"
        lines.append(f"  epochs     {_time_line(record, epochs, wall_time)}")
        lines.append(f"  train      {_numbers(last.get('train_loss'), scores(last, 'train'))}")
        tested = [(i, e["test_result"]) for i, e in epochs if e.get("test_result")]
        if tested:
            i, test = tested[-1]
            lines.append(
                f"  test       {_numbers(test.get('test_loss'), scores(test, 'test'))}"
                + (f" (epoch {i + 1})" if i != last_epoch else "")
            )
            scored = [(i, t["test_score"]) for i, t in tested if finite(t.get("test_score")) is not None]
            if higher_is_better is not None and len(scored) > 1:
                best_i, best = (max if higher_is_better else min)(scored, key=lambda p: p[1])
                lines.append(f"  best test  {name} {best:.4f} at epoch {best_i + 1}")
        lines.append(f"  lr         {_fmt(last.get('lr'))} at the end")
    lines.append(f"  tracking   {_short_tracking(tracking, output_dir)}")
    lines.append(f"  files      {', '.join(p.name for p in files)}")
    lines.append(f"Output directory: {output_dir}")
    return "\n".join(lines)


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


def to_jsonable(value: Any) -> Any:
    """Plain JSON values: dict keys as strings, tensors/numpy as numbers or lists, NaN/inf as None."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # torch tensors, numpy arrays/scalars
        return to_jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def finite(value: Any) -> float | None:
    """``value`` as a finite Python float (0-d tensors and numpy scalars too), else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several values
        return None
    return number if math.isfinite(number) else None


# --------------------------------------------------------------------------- helpers


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def _epochs(record: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    """``record["training"]`` as (0-based epoch, summary) pairs in order (keys may be ints or strings)."""
    return sorted(((int(k), v) for k, v in (record.get("training") or {}).items()), key=lambda p: p[0])


def _short_tracking(text: str, output_dir: str | Path) -> str:
    """The tracking line without repeats: the reason in parentheses dropped when the line is long, a
    path given twice kept once, and paths inside the run folder written relative to it (the last
    line of the summary names that folder)."""
    import re

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
