"""curves.png and the summary (distlearn.command.curves.write_curves, distlearn.command.summary.summary_text)."""

from __future__ import annotations

import math

from distlearn.command.curves import curves_figure, write_curves
from distlearn.command.summary import summary_text


def _record(train_loss, test_loss, train_score=None, test_score=None, lr=None, metric="accuracy"):
    training = {}
    for i, (a, b) in enumerate(zip(train_loss, test_loss)):
        training[str(i)] = {
            "train_loss": a, "train_score": None if train_score is None else train_score[i],
            "metric_name": metric, "lr": 1e-3 * 0.9**i if lr is None else lr[i],  # a schedule: its own panel
            "test_result": {"test_loss": b, "test_score": None if test_score is None else test_score[i],
                            "metric_name": metric},
        }
    return {"training": training}


def _panels(fig):
    return list(fig.axes)


def test_curves_label_axes_name_the_run_and_mark_the_best_epoch(tmp_path):
    record = _record([2.0, 1.0, 0.5, 0.4], [2.1, 1.2, 0.9, 1.0], [0.3, 0.6, 0.8, 0.9], [0.3, 0.5, 0.8, 0.7])
    fig = curves_figure(record, title="digits-20260101-120000")
    loss, score, lr = _panels(fig)
    assert fig._suptitle.get_text() == "digits-20260101-120000"
    assert (loss.get_ylabel(), score.get_ylabel(), lr.get_ylabel()) == ("loss", "accuracy", "learning rate")
    assert all(ax.get_xlabel() == "epoch" for ax in (loss, score, lr))
    labels = [line.get_label() for line in score.get_lines()]
    assert "best test: epoch 3 (0.8)" in labels  # 1-based, the highest test accuracy
    assert loss.get_yscale() == "linear"
    (tmp_path / "run-x").mkdir()
    out = write_curves(tmp_path / "run-x" / "curves.png", record)  # titled with the run folder's name
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_drop_a_score_that_repeats_the_loss_and_use_log_scale_over_decades():
    losses, tests = [28000.0, 9000.0, 3000.0, 2600.0], [26000.0, 5000.0, 3300.0, 3400.0]
    record = _record(losses, tests, losses, tests, lr=[0.02, 0.01, 1e-3, 1e-5], metric="mse")
    fig = curves_figure(record)
    loss, lr = _panels(fig)  # no separate MSE panel: it would draw the same curves again
    assert loss.get_ylabel() == "loss (= mse)"
    assert loss.get_yscale() == "log" and lr.get_yscale() == "log"
    assert "best test: epoch 3 (3300)" in [line.get_label() for line in loss.get_lines()]  # lowest test MSE


def test_a_constant_learning_rate_is_named_in_the_title_not_drawn(tmp_path):
    """A flat lr line on a 0.00096-0.00104 axis says nothing: the title says it once, the panel is left out."""
    record = _record([2.0, 1.0, 0.5], [2.1, 1.2, 0.9], [0.3, 0.6, 0.8], [0.3, 0.5, 0.8], lr=[1e-3] * 3)
    fig = curves_figure(record, title="digits-20260101-120000")
    assert [ax.get_ylabel() for ax in _panels(fig)] == ["loss", "accuracy"]
    assert fig._suptitle.get_text() == "digits-20260101-120000\nconstant learning rate 0.001"
    no_lr = _record([2.0, 1.0], [2.1, 1.2])
    for epoch in no_lr["training"].values():
        epoch.pop("lr")
    fig = curves_figure(no_lr, title="t")
    assert [ax.get_ylabel() for ax in _panels(fig)] == ["loss"] and fig._suptitle.get_text() == "t"
    assert write_curves(tmp_path / "curves.png", record).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_skip_nan_epochs_and_mark_lowest_loss_without_a_metric():
    record = _record([1.0, math.nan, 0.5], [1.0, 0.7, 0.8])
    fig = curves_figure(record)
    loss, lr = _panels(fig)
    train = [line for line in loss.get_lines() if line.get_label() == "train"][0]
    assert list(train.get_xdata()) == [1, 3]
    assert "best test: epoch 2 (0.7)" in [line.get_label() for line in loss.get_lines()]


def test_summary_tracking_line_is_short_and_names_the_path_once(tmp_path):
    out = tmp_path / "runs" / "digits-20260101-120000"
    run = f"{out}/wandb/offline-run-20260101_120001-abcd1234"
    tracking = f"W&B offline (no W&B credentials (WANDB_API_KEY or ~/.netrc)): {run}; upload with: wandb sync {run}"
    text = summary_text(_record([1.0], [1.0], [0.5], [0.5]), output_dir=out, title="t", files=[], tracking=tracking,
                        wall_time=1.0)
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("tracking"))
    assert len(line) < 130, line
    assert line.count("offline-run-20260101_120001-abcd1234") == 1
    assert "wandb sync wandb/offline-run-20260101_120001-abcd1234" in line
    assert text.splitlines()[-1] == f"Output directory: {out}"


def _visible_xticks(ax):
    ax.figure.canvas.draw()
    lo, hi = ax.get_xlim()
    return [float(x) for x in ax.get_xticks() if lo <= x <= hi]


def test_curves_tick_whole_epochs_only():
    """Epochs are whole: 3 epochs are ticked 1, 2, 3 (not 1.0, 1.5, ...), one epoch at 1 (not 0.96-1.04)."""
    for n, want in ((1, [1.0]), (3, [1.0, 2.0, 3.0])):
        fig = curves_figure(_record([1.0 / (i + 1) for i in range(n)], [1.0] * n, [0.5] * n, [0.5] * n))
        for ax in _panels(fig):
            assert _visible_xticks(ax) == want, (n, ax.get_ylabel())
    fig = curves_figure(_record([1.0] * 40, [1.0] * 40))
    assert all(x == int(x) for x in _visible_xticks(_panels(fig)[0]))


def _timed(times, samples, resumed_from=None):
    record = _record([1.0] * len(times), [1.0] * len(times))
    for epoch, t, n in zip(record["training"].values(), times, samples):
        epoch.update(time_cost=t, samples=n, samples_per_second=n / t)
    record["preparation"] = {"preparation_time_cost": 0.1}
    if resumed_from is not None:
        record["preparation"]["resumed_from"] = resumed_from
    return record


def _epochs_line(record, wall_time):
    text = summary_text(record, output_dir="/x", title="t", files=[], tracking="off", wall_time=wall_time)
    return next(ln for ln in text.splitlines() if ln.strip().startswith("epochs"))


def test_summary_rate_is_every_sample_over_every_epochs_time():
    # 1000 samples in 1 s, then 1000 in 9 s: 2000 / 10 s = 200/s (the mean of the rates would say 555/s)
    line = _epochs_line(_timed([1.0, 9.0], [1000, 1000]), wall_time=12.0)
    assert line.split() == ["epochs", "2", "in", "10.0", "s", "of", "training,", "12.0", "s", "in", "all",
                            "(200", "samples/s)"], line


def test_summary_of_a_resumed_run_says_the_wall_time_is_this_sessions():
    """The record holds every epoch since the start; the wall time is this session's only."""
    record = _timed([20.0, 20.0, 14.8], [500, 500, 500], {"epoch": 2, "batches_done": 7, "optimizer_step": 47})
    line = _epochs_line(record, wall_time=7.6)
    assert "3 in 54.8 s of training (27 samples/s)" in line, line
    assert "this session resumed in epoch 3 after batch 7 and took 7.6 s in all" in line, line
    at_end = _timed([2.0], [10], {"epoch": 1, "batches_done": 0, "optimizer_step": 5})
    assert "this session resumed after epoch 1 and took" in _epochs_line(at_end, wall_time=1.0)


def _best_line(text):
    return next(ln for ln in text.splitlines() if ln.strip().startswith("best test"))


def test_curves_png_and_the_summary_mark_the_same_best_epoch_by_the_metrics_own_direction(tmp_path, monkeypatch):
    """A lower-is-better metric whose name no list knows ("brier"): the metric says lower is better,
    and curves.png, written with the outputs, marks the epoch the summary names (epoch 2, not epoch 1)."""
    import torch

    from distlearn.command import curves, run_folder

    record = _record([1.0, 0.8, 0.7], [1.0, 0.9, 0.95], [0.3, 0.2, 0.25], [0.3, 0.2, 0.25], metric="brier")
    text = summary_text(record, output_dir="/x", title="t", files=[], tracking="off", wall_time=1.0,
                        higher_is_better=False)
    assert _best_line(text).split() == ["best", "test", "brier", "0.2000", "at", "epoch", "2"]
    figures, draw = [], curves.curves_figure

    def drawn(*args, **kwargs):
        figures.append(draw(*args, **kwargs))
        return figures[-1]

    monkeypatch.setattr(curves, "curves_figure", drawn)
    run_folder.write_outputs(tmp_path, {"run": {"seed": 0}}, record, {"w": torch.zeros(2)}, higher_is_better=False)
    (_, score, _) = _panels(figures[0])
    assert "best test: epoch 2 (0.2)" in [line.get_label() for line in score.get_lines()]
    (_, score, _) = _panels(curves_figure(record, higher_is_better=True))
    assert "best test: epoch 1 (0.3)" in [line.get_label() for line in score.get_lines()]  # the direction decides


def test_curves_without_a_metric_direction_mark_the_lowest_test_loss():
    record = _record([1.0, 0.8, 0.7], [1.0, 0.9, 0.95], [0.3, 0.2, 0.25], [0.3, 0.2, 0.25], metric="brier")
    loss, _, _ = _panels(curves_figure(record, higher_is_better=None))
    assert "best test: epoch 2 (0.9)" in [line.get_label() for line in loss.get_lines()]
