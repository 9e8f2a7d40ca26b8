"""curves.png and the summary's tracking line (distlearn.report.write_curves / summary_text)."""

from __future__ import annotations

import math

from distlearn.report import curves_figure, summary_text, write_curves


def _record(train_loss, test_loss, train_score=None, test_score=None, lr=None, metric="accuracy"):
    training = {}
    for i, (a, b) in enumerate(zip(train_loss, test_loss)):
        training[str(i)] = {
            "train_loss": a, "train_score": None if train_score is None else train_score[i],
            "metric_name": metric, "lr": 1e-3 if lr is None else lr[i],
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
