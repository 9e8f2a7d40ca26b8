"""Multilabel metrics in real gloo groups of 1-4 ranks against scikit-learn (and torchmetrics' per-label accuracy).

Random (n, L) indicator matrices split over the ranks, with a label absent on a
rank, a label absent everywhere and a rank with no data; every metric rides in
one calculate() through a Metrics collection.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sklearn import metrics as sk

from distlearn.accumulators import Mean, calculate
from distlearn.metrics import (
    AUROC,
    F1,
    Accuracy,
    AveragePrecision,
    FBeta,
    Metrics,
    Precision,
    Recall,
)

AVERAGES = ("micro", "macro", "weighted", "none")


def split(data, lengths):
    return np.split(data, np.cumsum(lengths)[:-1])


def multilabel_metrics(labels):
    members = {}
    for avg in AVERAGES:
        members[f"precision_{avg}"] = Precision(avg, num_labels=labels)
        members[f"recall_{avg}"] = Recall(avg, num_labels=labels)
        members[f"f1_{avg}"] = F1(avg, num_labels=labels)
        members[f"f2_{avg}"] = FBeta(2.0, avg, num_labels=labels)
        members[f"accuracy_{avg}"] = Accuracy(num_labels=labels, average=avg)
    members["auroc"] = AUROC(num_labels=labels)
    members["ap"] = AveragePrecision(num_labels=labels)
    return Metrics(members, primary="f1_macro")


def multilabel_on_ranks(rank, world, labels, y_true, y_score, batch):
    metrics, count = multilabel_metrics(labels), Mean()
    t_all, s_all = y_true[rank], y_score[rank]
    for start in range(0, len(t_all), batch):
        t, s = torch.as_tensor(t_all[start : start + batch]), torch.as_tensor(s_all[start : start + batch])
        metrics(y_score=s, y_true=t)
        count(float(len(t)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return calculate({"metrics": metrics, "count": count})


def check_against_sklearn(values, y_true, y_score, probabilities):
    y_pred = (probabilities >= 0.5).astype(int)
    for avg in AVERAGES:
        kw = {"average": None if avg == "none" else avg, "zero_division": 0}
        expected = {
            "precision": sk.precision_score(y_true, y_pred, **kw),
            "recall": sk.recall_score(y_true, y_pred, **kw),
            "f1": sk.f1_score(y_true, y_pred, **kw),
            "f2": sk.fbeta_score(y_true, y_pred, beta=2.0, **kw),
        }
        for name, value in expected.items():
            got = values[f"{name}_{avg}"]
            got = got.numpy() if avg == "none" else got
            np.testing.assert_allclose(got, value, rtol=1e-12, atol=1e-15, err_msg=f"{name}_{avg}")
    per_label = (y_true == y_pred).mean(0)  # torchmetrics' MultilabelAccuracy(average="none")
    np.testing.assert_allclose(values["accuracy_none"].numpy(), per_label, rtol=1e-12)
    assert values["accuracy_micro"] == pytest.approx(1 - sk.hamming_loss(y_true, y_pred), rel=1e-12)
    assert values["accuracy_macro"] == pytest.approx(per_label.mean(), rel=1e-12)
    support = y_true.sum(0)  # torchmetrics' weights: each label's positives (0 when none has any)
    weighted = (per_label * support).sum() / support.sum() if support.sum() else 0.0
    assert values["accuracy_weighted"] == pytest.approx(weighted, rel=1e-12)
    both = [k for k in range(y_true.shape[1]) if 0 < y_true[:, k].sum() < len(y_true)]
    if both:
        expected_auc = np.mean([sk.roc_auc_score(y_true[:, k], y_score[:, k]) for k in both])
        assert values["auroc"] == pytest.approx(expected_auc, rel=1e-12)
    positives = [k for k in range(y_true.shape[1]) if y_true[:, k].any()]
    if positives:
        expected_ap = np.mean([sk.average_precision_score(y_true[:, k], y_score[:, k]) for k in positives])
        assert values["ap"] == pytest.approx(expected_ap, rel=1e-12)


@settings(
    max_examples=10, deadline=None, phases=(Phase.generate,), suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    world=st.sampled_from([1, 2, 3, 4]),
    lengths=st.lists(st.integers(0, 25), min_size=4, max_size=4),
    labels=st.integers(2, 5),  # one column is binary data to scikit-learn
    batch=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
)
def test_multilabel_metrics_equal_sklearn(dist_pool, world, lengths, labels, batch, seed):
    lengths = lengths[:world]
    n = sum(lengths)
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, (n, labels))
    y_true[: lengths[0], 0] = 0  # label 0 absent on rank 0
    if labels > 2:
        y_true[:, -1] = 0  # the last label absent everywhere
    y_score = rng.random((n, labels))  # probabilities: the batch split cannot change the sigmoid rule
    results = dist_pool.run(multilabel_on_ranks, world, labels, split(y_true, lengths), split(y_score, lengths), batch)
    for result in results:
        values = result["metrics"]
        if n == 0:
            assert math.isnan(values["accuracy_micro"]) and math.isnan(values["auroc"])
            continue
        check_against_sklearn(values, y_true, y_score, y_score)
        assert results[0]["metrics"]["f1_macro"] == values["f1_macro"]  # identical on every rank


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_logits_go_through_a_sigmoid_and_a_rank_may_have_no_data(dist_pool, world):
    rng = np.random.default_rng(world)
    n, labels = 60, 4
    y_true = rng.integers(0, 2, (n, labels))
    logits = rng.normal(size=(n, labels)) * 3 + y_true - 0.5
    lengths = [n // world] * world
    lengths[0] += n - sum(lengths)
    if world > 2:
        lengths[1], lengths[0] = 0, lengths[0] + lengths[1]  # a rank with no data
    batch = max(lengths)  # one batch per rank: each holds logits outside [0, 1]
    results = dist_pool.run(multilabel_on_ranks, world, labels, split(y_true, lengths), split(logits, lengths), batch)
    for result in results:
        check_against_sklearn(result["metrics"], y_true, logits, 1 / (1 + np.exp(-logits)))


def bad_values(rank, world):
    f1 = F1("macro", num_labels=3)
    y = torch.zeros(4, 3, dtype=torch.long)
    if rank == world - 1:
        y[0, 1] = 2
    f1(y_pred=y, y_true=torch.zeros(4, 3))
    try:
        f1.calculate()
    except ValueError as e:
        return str(e)
    return None


def test_values_other_than_0_and_1_raise_on_every_rank(dist_pool):
    for message in dist_pool.run(bad_values, 2):
        assert message and "other than 0 and 1" in message and "num_labels=3" in message


def test_bad_arguments_and_shapes_say_what_to_pass():
    with pytest.raises(ValueError, match="average must be one of 'micro', 'macro', 'weighted', 'none'"):
        F1(num_labels=3)  # average="binary" means one positive class
    with pytest.raises(ValueError, match="num_classes .* or num_labels .*, not both"):
        Precision("macro", num_classes=3, num_labels=3)
    with pytest.raises(ValueError, match="num_labels must be an int >= 1"):
        Recall("micro", num_labels=0)
    with pytest.raises(ValueError, match="top_k=2 has no multilabel meaning"):
        Accuracy(top_k=2, num_labels=3)
    with pytest.raises(ValueError, match=r"must both have shape \(n, 3\), got \(4,\) and \(4,\)"):
        F1("macro", num_labels=3)(y_score=torch.rand(4), y_true=torch.ones(4))
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        AUROC(num_labels=3).update(y_score=torch.rand(4, 2), y_true=torch.ones(4, 2))


def test_names_and_local_values():
    assert F1("macro", num_labels=3).name == "multilabel_f1_macro"
    assert FBeta(0.5, "none", num_labels=3).name == "multilabel_f0.5_none"
    assert Accuracy(num_labels=3).name == "multilabel_accuracy"
    assert AUROC(num_labels=3).name == "multilabel_auroc_macro"
    y_true = torch.tensor([[1, 0, 1], [0, 1, 1]])
    y_score = torch.tensor([[0.9, 0.2, 0.4], [0.1, 0.8, 0.7]])
    metric = F1("none", num_labels=3)
    torch.testing.assert_close(metric(y_score=y_score, y_true=y_true), torch.tensor([1.0, 1.0, 2 / 3], dtype=torch.float64))
    assert Accuracy(num_labels=3).evaluate(y_true=y_true, y_score=y_score) == pytest.approx(5 / 6)
    assert metric.predict(y_score).tolist() == [[1, 0, 0], [0, 1, 1]]


def weighted_accuracy_on_ranks(rank, world, y_true, y_score):
    accuracy = Accuracy(num_labels=y_true[0].shape[1], average="weighted")
    accuracy(y_score=torch.as_tensor(y_score[rank]), y_true=torch.as_tensor(y_true[rank]))
    return accuracy.calculate()


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("case", ["random", "a_label_without_positives", "no_positives_at_all"])
def test_multilabel_weighted_accuracy_weighs_labels_by_support_as_torchmetrics(dist_pool, world, case):
    # Before: average="weighted" returned the macro mean. torchmetrics' MultilabelAccuracy weighs each
    # label's accuracy by its positives; with no positive anywhere the weighted value is 0.
    torchmetrics = pytest.importorskip("torchmetrics")
    rng = np.random.default_rng(world)
    y_true = (rng.random((23, 4)) < np.array([0.1, 0.3, 0.5, 0.8])).astype(np.int64)
    if case == "a_label_without_positives":
        y_true[:, 1] = 0
    if case == "no_positives_at_all":
        y_true[:] = 0
    y_score = rng.random((23, 4))
    lengths = [23, 0, 0][:world] if world == 1 else [9, 0, 14][:world] if world == 3 else [5, 18]
    reference = torchmetrics.classification.MultilabelAccuracy(num_labels=4, average="weighted")
    expected = float(reference(torch.as_tensor(y_score), torch.as_tensor(y_true)))
    macro = float((y_true == (y_score >= 0.5)).mean(0).mean())
    assert case == "no_positives_at_all" or expected != pytest.approx(macro)  # the case tells them apart
    for value in dist_pool.run(weighted_accuracy_on_ranks, world, split(y_true, lengths), split(y_score, lengths)):
        assert value == pytest.approx(expected, rel=1e-6)  # torchmetrics computes in float32


def test_only_the_weighted_multilabel_accuracy_keeps_a_support_state():
    # the other averages keep the states (and checkpoints) they had
    for average, names in (("macro", {"correct", "total"}), ("weighted", {"correct", "total", "support"})):
        accuracy = Accuracy(num_labels=3, average=average)
        accuracy(y_pred=torch.ones(2, 3), y_true=torch.tensor([[1, 0, 1], [1, 0, 0]]))
        assert set(accuracy.state_dict()["states"]) == names
