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
    f1_score,
    mean_absolute_error,
    mean_squared_error,
)

from distlearn.accumulators import Mean, calculate
from distlearn.metrics import F1, MAE, MSE, Accuracy, evaluate

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
