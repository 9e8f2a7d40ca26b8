"""`distlearn predict`: one row per test sample (class, scores) or per target token (row, position, argmax), in
dataset order, as CSV or .npy; the same file on 1 and 2 processes; its output path checked before anything runs."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import warm
from conftest import reset_accelerate
from launching import launch_env
from test_evaluate import NO_TRACKING, command, last_test, trained


@pytest.fixture(scope="session")
def wine_run(tmp_path_factory) -> Path:
    """wine, 2 epochs: 36 test samples at batch 16, so 2 processes pad the last batch."""
    return trained(tmp_path_factory, "wine", "wine", "learner_configs.learner_parameters.n_epochs=2", NO_TRACKING)


@pytest.fixture(scope="session")
def charlm_run(tmp_path_factory) -> Path:
    """A small character LM, 1 epoch: token labels."""
    return trained(tmp_path_factory, "charlm", "charlm", "learner_configs.learner_parameters.n_epochs=1",
                   "data_configs.data_parameters.max_chars=20000", NO_TRACKING)


def read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], np.array(rows[1:], dtype=float)


def test_predict_writes_every_test_sample_in_order_with_class_and_scores(wine_run, tmp_path, capsys):
    from distlearn import load_run

    code, out, err = command(capsys, "predict", str(wine_run), "--output", str(tmp_path / "p.csv"), "-q")
    assert code == 0, err
    header, table = read_csv(tmp_path / "p.csv")
    assert header == ["index", "target", "prediction", "score_0", "score_1", "score_2"]
    data = load_run(wine_run).data  # the run's data, rebuilt: the test labels in dataset order
    labels = np.concatenate([y.numpy() for _, y in data.load()["test_loader"]])
    assert len(table) == len(labels) == 36 and (table[:, 0] == np.arange(36)).all()
    assert (table[:, 1] == labels).all()
    assert (table[:, 2] == table[:, 3:].argmax(1)).all()
    want = last_test(wine_run)["test_score"]  # macro F1
    from sklearn.metrics import f1_score

    assert f1_score(table[:, 1], table[:, 2], average="macro") == pytest.approx(want, abs=1e-12)
    assert "predicted 36 test samples with the final weights" in out
    # the same columns in a .npy structured array, the same numbers
    code, _, err = command(capsys, "predict", str(wine_run), "--output", str(tmp_path / "p.npy"), "-q")
    assert code == 0, err
    saved = np.load(tmp_path / "p.npy")
    assert saved.dtype.names == ("index", "target", "prediction", "score")
    assert (saved["target"] == table[:, 1]).all() and (saved["prediction"] == table[:, 2]).all()
    assert (saved["score"] == table[:, 3:]).all()  # the CSV's floats read back exactly


def test_the_file_is_the_same_on_two_processes(wine_run, tmp_path, capsys):
    code, _, err = command(capsys, "predict", str(wine_run), "--output", str(tmp_path / "one.csv"), "-q")
    assert code == 0, err
    result = warm.run(  # 2 ranks forked warm, a hand launch (tests/warm.py): the launcher is not the claim
        [sys.executable, "-m", "distlearn", "predict", str(wine_run), "--output", str(tmp_path / "two.csv"), "-q"],
        env=launch_env(), timeout=240, cwd=tmp_path, procs=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()


def _token_table(rank: int, world: int, run: str) -> dict:
    from distlearn.command.inference import _positions
    from distlearn.command.predictions import prediction_table
    from distlearn.experiment.saved_run import load_run

    reset_accelerate()
    try:
        saved = load_run(run)
        positions = _positions(saved)
        table = prediction_table(saved.predict(return_scores=False), positions)
        return {k: v.tolist() for k, v in table.items()}
    finally:
        reset_accelerate()


def test_token_labels_give_one_row_per_target_token_the_same_on_two_processes(charlm_run, dist_pool, tmp_path,
                                                                               capsys):
    code, out, err = command(capsys, "predict", str(charlm_run), "--output", str(tmp_path / "t.npy"), "-q")
    assert code == 0, err
    saved = np.load(tmp_path / "t.npy")
    assert saved.dtype.names == ("row", "position", "target", "prediction")
    accuracy = last_test(charlm_run)["test_scores"]["accuracy"]
    assert (saved["target"] == saved["prediction"]).mean() == pytest.approx(accuracy, abs=1e-12)
    from distlearn import load_run

    windows = [y for _, y in load_run(charlm_run).data.load()["test_loader"]]
    labels = np.concatenate([y.numpy() for y in windows])
    assert (labels[saved["row"], saved["position"]] == saved["target"]).all()  # each row names its token
    assert len(saved) == labels.size and f"predicted {labels.size} target tokens" in out
    two = dist_pool.run(_token_table, 2, str(charlm_run))  # the same table on 2 processes as this one process wrote
    assert two[0] == two[1] == {name: saved[name].tolist() for name in saved.dtype.names}


def test_a_bad_output_is_refused_before_anything_runs(wine_run, tmp_path, capsys):
    (tmp_path / "taken.csv").write_text("mine\n")
    (tmp_path / "a-file").write_text("")
    cases = {
        "p.txt": "unknown format '.txt'; expected a file ending in .csv or .npy",
        "taken.csv": "exists; choose another path or pass --overwrite to replace it",
        "a-file/p.csv": "no folder",
        "missing/p.csv": "no folder",
        str(wine_run / "record.json"): "unknown format '.json'",
    }
    for name, message in cases.items():
        code, _, err = command(capsys, "predict", str(wine_run), "--output", str(tmp_path / name), "-q")
        assert code == 2 and message in err and err.count("\n") == 1, (name, err)
    assert (tmp_path / "taken.csv").read_text() == "mine\n"  # nothing replaced
    code, _, err = command(capsys, "predict", str(wine_run), "--output", str(tmp_path / "taken.csv"), "--overwrite", "-q")
    assert code == 0 and (tmp_path / "taken.csv").read_text().startswith("index,target,prediction"), err
    with pytest.raises(SystemExit) as missing:  # argparse's own answer: --output is required
        command(capsys, "predict", str(wine_run), "-q")
    assert missing.value.code == 2 and "the following arguments are required: --output" in capsys.readouterr().err


def test_token_positions_follow_the_learners_shift_and_ignore_index():
    """The rows and positions of the target tokens, as test() lists them: row by row, the labels after the
    first `label_shift` of each row that are not `ignore_index`, batch after batch."""
    import torch

    from distlearn.command.predictions import token_positions

    batches = [{"labels": torch.tensor([[5, 6, -100, 7], [8, -100, -100, 9]])}, {"labels": torch.tensor([[1, 2, 3, -100]])}]
    found = token_positions(batches, lambda b: b["labels"], label_shift=1, ignore_index=-100)
    assert found.tolist() == [[0, 1], [0, 3], [1, 3], [2, 1], [2, 2]]
    assert token_positions([(torch.zeros(2, 3), torch.tensor([0, 1]))], lambda b: b[-1], 0, -100) is None  # one label a row
