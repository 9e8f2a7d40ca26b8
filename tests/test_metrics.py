"""Metrics in real gloo process groups of 1-4 ranks against scikit-learn on the concatenated data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    top_k_accuracy_score,
)

from distlearn.accumulators import Mean, calculate
from distlearn.metrics import F1, MAE, MSE, R2, Accuracy, ConfusionMatrix, evaluate

CLASSIFIERS = {
    "accuracy": (lambda k: Accuracy(), lambda t, p: accuracy_score(t, p)),
    "f1_binary": (lambda k: F1("binary"), lambda t, p: f1_score(t, p, zero_division=0)),
    "f1_micro": (lambda k: F1("micro", num_classes=k), lambda t, p: f1_score(t, p, average="micro")),
    "f1_macro": (lambda k: F1("macro", num_classes=k), lambda t, p: f1_score(t, p, average="macro", zero_division=0)),
    "f1_macro_grown": (lambda k: F1("macro"), lambda t, p: f1_score(t, p, average="macro", zero_division=0)),
}
REGRESSORS = {"mse": (MSE, mean_squared_error), "mae": (MAE, mean_absolute_error)}


def split(data: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    return np.split(data, np.cumsum(lengths)[:-1])


def classify_on_ranks(rank, world, names, classes, y_true, y_pred, batch):
    metrics = {name: CLASSIFIERS[name][0](classes) for name in names}
    for start in range(0, len(y_true[rank]), batch):
        t = torch.as_tensor(y_true[rank][start : start + batch])
        p = torch.as_tensor(y_pred[rank][start : start + batch])
        for metric in metrics.values():
            metric(y_pred=p, y_true=t)
    return calculate(metrics)


def regress_on_ranks(rank, world, y_true, y_pred):
    metrics = {name: make() for name, (make, _) in REGRESSORS.items()}
    loss = Mean()
    for t, p in zip(np.array_split(y_true[rank], 3), np.array_split(y_pred[rank], 3)):
        for metric in metrics.values():
            metric(y_pred=torch.as_tensor(p), y_true=torch.as_tensor(t))
    loss(1.0)
    return calculate({**metrics, "loss": loss})


def scores_on_ranks(rank, world, y_true, y_score):
    accuracy, f1 = Accuracy(), F1("macro", num_classes=y_score[0].shape[1])
    accuracy(y_score=torch.as_tensor(y_score[rank]), y_true=torch.as_tensor(y_true[rank]))
    f1(y_score=torch.as_tensor(y_score[rank]), y_true=torch.as_tensor(y_true[rank]))
    return accuracy.calculate(), f1.calculate()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    world=st.sampled_from([1, 2, 3, 4]),
    lengths=st.lists(st.integers(0, 40), min_size=4, max_size=4),
    classes=st.integers(2, 6),
    batch=st.integers(1, 16),
    seed=st.integers(0, 2**31 - 1),
)
def test_classification_metrics_equal_sklearn(dist_pool, world, lengths, classes, batch, seed):
    lengths = lengths[:world]
    if sum(lengths) == 0:
        lengths[0] = 1
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, classes, sum(lengths))
    y_pred = np.where(rng.random(len(y_true)) < 0.6, y_true, rng.integers(0, classes, len(y_true)))
    names = [n for n in CLASSIFIERS if n != "f1_binary" or classes == 2]
    results = dist_pool.run(classify_on_ranks, world, names, classes, split(y_true, lengths), split(y_pred, lengths), batch)
    for result in results:
        assert result == results[0]
        for name in names:
            assert result[name] == pytest.approx(CLASSIFIERS[name][1](y_true, y_pred), abs=1e-12), name


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_regression_metrics_equal_sklearn_with_a_rank_without_data(dist_pool, world):
    rng = np.random.default_rng(world)
    lengths = [17, 0, 5, 9][:world]
    y_true = rng.normal(size=(sum(lengths), 2))
    y_pred = y_true + rng.normal(scale=0.3, size=y_true.shape)
    for result in dist_pool.run(regress_on_ranks, world, split(y_true, lengths), split(y_pred, lengths)):
        for name, (_, reference) in REGRESSORS.items():
            assert result[name] == pytest.approx(reference(y_true, y_pred), rel=1e-12)


def test_a_grown_confusion_matrix_is_padded_across_ranks(dist_pool):
    # rank 0 only ever sees classes 0-1, rank 1 up to class 4: the matrices differ in shape
    y_true = [np.array([0, 1, 1, 0]), np.array([4, 2, 3, 4, 0])]
    y_pred = [np.array([0, 1, 0, 0]), np.array([4, 2, 2, 1, 0])]
    results = dist_pool.run(classify_on_ranks, 2, ["f1_macro_grown", "f1_micro"], 5, y_true, y_pred, 3)
    t, p = np.concatenate(y_true), np.concatenate(y_pred)
    for result in results:
        assert result["f1_macro_grown"] == pytest.approx(f1_score(t, p, average="macro"))


@pytest.mark.parametrize("world", [2, 3])
def test_predictions_from_scores(dist_pool, world):
    rng = np.random.default_rng(0)
    y_score = rng.normal(size=(30, 4))
    y_true = rng.integers(0, 4, 30)
    lengths = [10, 20, 0][:world] if world == 3 else [12, 18]
    results = dist_pool.run(scores_on_ranks, world, split(y_true, lengths), split(y_score, lengths))
    y_pred = y_score.argmax(1)
    for accuracy, f1 in results:
        assert accuracy == pytest.approx(accuracy_score(y_true, y_pred))
        assert f1 == pytest.approx(f1_score(y_true, y_pred, average="macro"))


def test_binary_scores_use_the_threshold():
    probability = torch.tensor([0.1, 0.7, 0.4, 0.9])
    accuracy = Accuracy()
    accuracy(y_score=probability, y_true=torch.tensor([0, 1, 1, 1]))
    assert accuracy.calculate() == 0.75
    assert Accuracy(threshold=0.3).evaluate(y_true=[0, 1, 1, 1], y_score=probability) == 1.0


def test_calling_returns_the_local_value_without_syncing():
    accuracy = Accuracy()
    value = accuracy(y_pred=torch.tensor([1, 0]), y_true=torch.tensor([1, 1]))
    assert isinstance(value, torch.Tensor) and value.dtype == torch.float64 and value.item() == 0.5


def test_evaluate_is_one_shot_and_leaves_state_alone():
    f1 = F1("macro", num_classes=3)
    f1(y_pred=[0, 1, 2], y_true=[0, 1, 2])
    assert f1.evaluate(y_true=[0, 1, 2, 2], y_pred=[0, 2, 2, 1]) == pytest.approx(
        f1_score([0, 1, 2, 2], [0, 2, 2, 1], average="macro")
    )
    assert f1.calculate() == 1.0
    values = evaluate(y_true=[0, 1, 1], y_pred=[0, 1, 0], metrics=["accuracy", "f1", "mse", "mae"])
    assert values == pytest.approx({"accuracy": 2 / 3, "f1": f1_score([0, 1, 1], [0, 1, 0]), "mse": 1 / 3, "mae": 1 / 3})
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate(y_true=[1], y_pred=[1], metrics=["auc"])


def test_metric_errors_name_the_problem():
    with pytest.raises(ValueError, match="y_pred has 2 elements"):
        Accuracy()(y_pred=[1, 0], y_true=[1, 0, 1])
    with pytest.raises(ValueError, match="pass y_pred or y_score"):
        MSE()(y_true=[1.0])
    with pytest.raises(ValueError, match="average must be"):
        F1("samples")


def test_metric_with_nothing_is_nan():
    with pytest.warns(RuntimeWarning, match="NaN"):
        assert math.isnan(Accuracy().calculate())


def test_metric_state_dict_round_trip():
    a = F1("macro")
    a(y_pred=[0, 2], y_true=[0, 1])
    b = F1("macro")
    b.load_state_dict(a.state_dict())
    a(y_pred=[1], y_true=[1]), b(y_pred=[1], y_true=[1])
    assert a.calculate() == b.calculate()


def label_out_of_range_on_one_rank(rank, world):
    f1 = F1("macro", num_classes=3)
    f1(y_pred=[0, 1], y_true=[0, 5 if rank == world - 1 else 1])
    try:
        f1.calculate()
    except ValueError as error:
        return str(error)
    return "no error"


@pytest.mark.parametrize("world", [2, 3])
def test_a_label_out_of_range_on_one_rank_raises_on_every_rank(dist_pool, world):
    for message in dist_pool.run(label_out_of_range_on_one_rank, world, timeout=30):
        assert "1 labels or predictions outside [0, 3)" in message and "num_classes" in message


def test_binary_f1_on_multiclass_labels_is_a_clear_error():
    with pytest.raises(ValueError, match="binary F1 takes labels 0 and 1"):
        evaluate(y_true=[0, 1, 2], y_pred=[0, 2, 2], metrics=["f1"])


def top_k_on_ranks(rank, world, k, y_true, y_score, ignore_index):
    accuracy = Accuracy(top_k=k, ignore_index=ignore_index)
    for t, s in zip(np.array_split(y_true[rank], 2), np.array_split(y_score[rank], 2)):
        accuracy(y_score=torch.as_tensor(s), y_true=torch.as_tensor(t))
    return accuracy.calculate()


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("k", [2, 3])
def test_top_k_breaks_ties_as_sklearn_top_k_accuracy_score(dist_pool, world, k):
    # Scores from {0, 1, 2} tie often; scikit-learn ranks equal scores by higher class index first
    # (a stable ascending argsort, reversed). torch.topk's order among ties differed.
    rng = np.random.default_rng(k)
    y_score = rng.integers(0, 3, (60, 5)).astype(np.float32)
    y_true = rng.integers(0, 5, 60)
    expected = top_k_accuracy_score(y_true, y_score, k=k, labels=range(5))
    lengths = [60] if world == 1 else [25, 35]
    for value in dist_pool.run(top_k_on_ranks, world, k, split(y_true, lengths), split(y_score, lengths), None):
        assert value == pytest.approx(expected, abs=1e-12)


def test_top_k_tie_rule_on_sklearn_cases():
    # every label tied with others: the higher index wins the place, whatever the label
    y_score = torch.tensor([[0.2, 0.2, 0.2, 0.4], [0.3, 0.3, 0.3, 0.1], [0.5, 0.5, 0.0, 0.0], [0.25] * 4])
    for y_true in ([0, 2, 1, 3], [3, 0, 0, 2], [1, 1, 3, 0]):
        for k in (2, 3):
            expected = top_k_accuracy_score(y_true, y_score.numpy(), k=k, labels=range(4))
            assert Accuracy(top_k=k).evaluate(y_true=torch.tensor(y_true), y_score=y_score) == expected
    # ignored labels count for nothing; an ignore_index outside the classes must not be gathered
    value = Accuracy(top_k=2, ignore_index=-100).evaluate(y_true=torch.tensor([0, 2, -100, 3]), y_score=y_score)
    assert value == top_k_accuracy_score([0, 2, 3], y_score[[0, 1, 3]].numpy(), k=2, labels=range(4))


def r2_on_ranks(rank, world, y_true, y_pred):
    metrics = {"r2": R2(), "mse": MSE(), "mae": MAE()}
    for metric in metrics.values():
        metric(y_pred=torch.as_tensor(y_pred[rank]), y_true=torch.as_tensor(y_true[rank]))
    return calculate(metrics)


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("where", ["target", "prediction", "constant_target"])
def test_a_nan_reaches_r2_as_it_reaches_mse_and_mae(dist_pool, world, where):
    # Before: R2 gave 0.0 (the NaN spread failed "spread > 0" and fell to the constant-target branch).
    y_true = np.array([1.0, 2.0, 4.0, 3.0, 5.0, 0.5])
    y_pred = y_true + 0.25
    if where == "constant_target":
        y_true[:] = 2.0
    (y_true if where == "target" else y_pred)[4] = math.nan  # on the last rank when world == 2
    residual, spread = ((y_true - y_pred) ** 2).sum(), ((y_true - y_true.mean()) ** 2).sum()
    assert math.isnan(1 - residual / spread if spread else residual)  # numpy's formula gives NaN too
    lengths = [6] if world == 1 else [3, 3]
    for result in dist_pool.run(r2_on_ranks, world, split(y_true, lengths), split(y_pred, lengths)):
        assert math.isnan(result["r2"]) and math.isnan(result["mse"]) and math.isnan(result["mae"])


def test_r2_with_nan_strategy_ignore_equals_sklearn_on_the_rest():
    y_true, y_pred = np.array([1.0, math.nan, 4.0, 3.0]), np.array([1.5, 2.0, 3.0, math.nan])
    keep = ~(np.isnan(y_true) | np.isnan(y_pred))
    value = R2(nan_strategy="ignore").evaluate(y_true=torch.as_tensor(y_true), y_pred=torch.as_tensor(y_pred))
    assert value == pytest.approx(r2_score(y_true[keep], y_pred[keep]), rel=1e-12)


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.75])
def test_a_score_exactly_at_the_threshold_is_positive_in_every_task(threshold):
    # The rule is >= (the docstrings'): each case flips if a score equal to the threshold were negative.
    at = torch.tensor([threshold, threshold, 0.1, 0.9], dtype=torch.float64)
    assert Accuracy(threshold).predict(at).tolist() == [1, 1, 0, 1]
    assert Accuracy(threshold).evaluate(y_true=[1, 1, 0, 1], y_score=at) == 1.0
    assert F1(threshold=threshold).evaluate(y_true=[1, 1, 0, 1], y_score=at) == 1.0
    matrix = at.reshape(2, 2)
    assert Accuracy(threshold, num_labels=2).predict(matrix).tolist() == [[1, 1], [0, 1]]
    assert F1("micro", threshold=threshold, num_labels=2).evaluate(y_true=[[1, 1], [0, 1]], y_score=matrix) == 1.0
    below = torch.nextafter(at, torch.zeros(()))  # the closest score under it stays negative
    assert Accuracy(threshold).predict(below).tolist() == [0, 0, 0, 1]


def confusion_on_ranks(rank, world, y_true, y_pred):
    matrix, f1 = ConfusionMatrix(), F1("macro")
    for metric in (matrix, f1):
        metric(y_pred=torch.as_tensor(y_pred[rank]), y_true=torch.as_tensor(y_true[rank]))
    return calculate({"matrix": matrix, "f1": f1})


@pytest.mark.parametrize("world", [2, 3])
def test_grown_confusion_matrices_of_different_sizes_add_cell_by_cell(dist_pool, world):
    # Each rank grows its matrix to the largest label it saw: 2x2, 5x5, 0x0 (no data) or 3x3. The
    # smaller ones are padded at the far end (top-left aligned), so cell (i, j) means the same on every rank.
    y_true = [np.array([0, 1, 1, 0, 1]), np.array([4, 2, 3, 4, 0, 1]), np.array([2, 0, 2])][:world]
    y_pred = [np.array([1, 1, 0, 0, 1]), np.array([4, 2, 2, 1, 0, 3]), np.array([2, 1, 0])][:world]
    if world == 3:
        y_true[1], y_pred[1] = y_true[1][:0], y_pred[1][:0]  # the middle rank has no data
    t, p = np.concatenate(y_true), np.concatenate(y_pred)
    labels = range(max(t.max(), p.max()) + 1)
    for result in dist_pool.run(confusion_on_ranks, world, y_true, y_pred):
        np.testing.assert_array_equal(result["matrix"].numpy(), confusion_matrix(t, p, labels=labels))
        assert result["f1"] == pytest.approx(f1_score(t, p, average="macro", zero_division=0), rel=1e-12)
