"""The metrics users need, in real gloo groups of 1-4 ranks, against scikit-learn (or torchmetrics).

All metrics of one check ride in one calculate() with a Mean and a Cat, through a
Metrics collection, on random and edge data: a class absent on a rank, a rank
with no data.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn import metrics as sk

from distlearn.accumulators import Cat, Mean, calculate
from distlearn.metrics import (
    AUROC,
    F1,
    MAE,
    MSE,
    R2,
    RMSE,
    Accuracy,
    AveragePrecision,
    BinnedAUROC,
    BinnedAveragePrecision,
    ConfusionMatrix,
    FBeta,
    Metrics,
    Perplexity,
    Precision,
    Recall,
)


def split(data, lengths):
    return np.split(data, np.cumsum(lengths)[:-1])


def multiclass_metrics(k):
    members = {}
    for avg in ("micro", "macro", "weighted"):
        members[f"precision_{avg}"] = Precision(avg, num_classes=k)
        members[f"recall_{avg}"] = Recall(avg, num_classes=k)
        members[f"f1_{avg}"] = F1(avg, num_classes=k)
        members[f"f2_{avg}"] = FBeta(2.0, avg, num_classes=k)
    members["confusion"] = ConfusionMatrix(num_classes=k)
    members["accuracy"] = Accuracy()
    members["top2"] = Accuracy(top_k=2)
    members["auroc"] = AUROC(num_classes=k)
    members["ap"] = AveragePrecision(num_classes=k)
    return Metrics(members, primary="accuracy")


def multiclass_on_ranks(rank, world, k, y_true, y_score, batch):
    metrics, loss, scores = multiclass_metrics(k), Mean(), Cat()
    t_all, s_all = y_true[rank], y_score[rank]
    for start in range(0, len(t_all), batch):
        t, s = torch.as_tensor(t_all[start : start + batch]), torch.as_tensor(s_all[start : start + batch])
        metrics(y_score=s, y_true=t)
        loss(torch.tensor(float(len(t))), weight=len(t))
        scores(s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return calculate({"metrics": metrics, "loss": loss, "scores": scores})


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    world=st.sampled_from([1, 2, 3, 4]),
    lengths=st.lists(st.integers(0, 30), min_size=4, max_size=4),
    k=st.integers(3, 5),
    batch=st.integers(1, 16),
    seed=st.integers(0, 2**31 - 1),
)
def test_multiclass_metrics_equal_sklearn(dist_pool, world, lengths, k, batch, seed):
    lengths = lengths[:world]
    n = sum(lengths)
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, k - 1, n)  # class k-1 never occurs in the labels
    logits = rng.normal(size=(n, k))
    y_score = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    results = dist_pool.run(multiclass_on_ranks, world, k, split(y_true, lengths), split(y_score, lengths), batch)
    y_pred = y_score.argmax(1)
    for result in results:
        values = result["metrics"]
        if n == 0:
            assert result["scores"].numel() == 0
            assert math.isnan(values["accuracy"])
            continue
        gathered = result["scores"].numpy()  # step-major: compare as sets of rows
        np.testing.assert_array_equal(gathered[np.lexsort(gathered.T)], y_score[np.lexsort(y_score.T)])
        labels = sorted(set(y_true) | set(y_pred))
        for avg in ("micro", "macro", "weighted"):
            kw = dict(average=avg, zero_division=0, labels=labels)
            assert values[f"precision_{avg}"] == pytest.approx(sk.precision_score(y_true, y_pred, **kw))
            assert values[f"recall_{avg}"] == pytest.approx(sk.recall_score(y_true, y_pred, **kw))
            assert values[f"f1_{avg}"] == pytest.approx(sk.f1_score(y_true, y_pred, **kw))
            assert values[f"f2_{avg}"] == pytest.approx(sk.fbeta_score(y_true, y_pred, beta=2.0, **kw))
        np.testing.assert_array_equal(values["confusion"].numpy(), sk.confusion_matrix(y_true, y_pred, labels=range(k)))
        assert values["accuracy"] == pytest.approx(sk.accuracy_score(y_true, y_pred))
        assert values["top2"] == pytest.approx(sk.top_k_accuracy_score(y_true, y_score, k=2, labels=range(k)))
        present = [c for c in range(k) if 0 < (y_true == c).sum() < n]
        if present:
            expected_auc = np.mean([sk.roc_auc_score(y_true == c, y_score[:, c]) for c in present])
            assert values["auroc"] == pytest.approx(expected_auc)
        positives = [c for c in range(k) if (y_true == c).any()]
        expected_ap = np.mean([sk.average_precision_score(y_true == c, y_score[:, c]) for c in positives])
        assert values["ap"] == pytest.approx(expected_ap)


def binary_on_ranks(rank, world, y_true, y_score):
    metrics = Metrics([F1(), Precision(), Recall(), Accuracy(), AUROC(), AveragePrecision(),
                       BinnedAUROC(thresholds=25), BinnedAveragePrecision(thresholds=25)])
    if len(y_true[rank]):
        metrics(y_score=torch.as_tensor(y_score[rank]), y_true=torch.as_tensor(y_true[rank]))
    states = metrics["auroc_binned"]._states
    sizes = {name: tuple(s.shape) for name, s in states.items()}
    return metrics.calculate(), sizes


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("logits", [False, True])
def test_binary_metrics_equal_sklearn_and_torchmetrics(dist_pool, world, logits):
    import torchmetrics.functional.classification as tmc

    rng = np.random.default_rng(world)
    n = 157
    y_true = rng.integers(0, 2, n)
    raw = rng.normal(size=n) * 2 + y_true - 0.5
    y_score = raw if logits else 1 / (1 + np.exp(-raw))
    lengths = [n // world] * world
    lengths[0] += n - sum(lengths)
    if world > 2:
        lengths[1], lengths[0] = 0, lengths[0] + lengths[1]  # a rank with no data
    probability = 1 / (1 + np.exp(-raw))
    y_pred = (probability >= 0.5).astype(int)
    s, t = torch.as_tensor(y_score), torch.as_tensor(y_true)
    for values, sizes in dist_pool.run(binary_on_ranks, world, split(y_true, lengths), split(y_score, lengths)):
        assert values["f1"] == pytest.approx(sk.f1_score(y_true, y_pred))
        assert values["f1"] == pytest.approx(tmc.binary_f1_score(s, t).item())
        assert values["precision"] == pytest.approx(sk.precision_score(y_true, y_pred))
        assert values["recall"] == pytest.approx(sk.recall_score(y_true, y_pred))
        assert values["accuracy"] == pytest.approx(sk.accuracy_score(y_true, y_pred))
        assert values["auroc"] == pytest.approx(sk.roc_auc_score(y_true, y_score))
        assert values["average_precision"] == pytest.approx(sk.average_precision_score(y_true, y_score))
        assert values["auroc_binned"] == pytest.approx(tmc.binary_auroc(s, t, thresholds=25).item(), abs=1e-6)
        assert values["average_precision_binned"] == pytest.approx(
            tmc.binary_average_precision(s, t, thresholds=25).item(), abs=1e-6
        )
        assert sizes == {"positive": (26,), "negative": (26,)}  # constant, whatever the data


def test_raw_logits_go_through_a_sigmoid_and_threshold_with_ge():
    # the case: thresholding logits at 0.5 gave F1 0.415 instead of 0.452
    import torchmetrics.functional.classification as tmc

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    logits = rng.normal(size=500) * 2 + y - 0.8
    ours = F1().evaluate(y_true=y, y_score=logits)
    assert ours == pytest.approx(tmc.binary_f1_score(torch.tensor(logits), torch.tensor(y)).item())
    assert ours == pytest.approx(sk.f1_score(y, logits >= 0))
    assert ours != pytest.approx(sk.f1_score(y, logits > 0.5))
    assert Accuracy().evaluate(y_true=[1, 0], y_score=[0.5, 0.49]) == 1.0  # >= threshold


def regression_on_ranks(rank, world, y_true, y_pred):
    metrics = Metrics([MSE(), RMSE(), MAE(), R2()])
    for t, p in zip(np.array_split(y_true[rank], 2), np.array_split(y_pred[rank], 2)):
        metrics(y_pred=torch.as_tensor(p), y_true=torch.as_tensor(t))
    return metrics.calculate()


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_regression_metrics_equal_sklearn(dist_pool, world):
    rng = np.random.default_rng(world)
    n = 101
    y_true = rng.normal(3.0, 2.0, n)
    y_pred = y_true + rng.normal(size=n)
    lengths = [0] + [n // (world - 1)] * (world - 2) + [n - (n // (world - 1)) * (world - 2)] if world > 1 else [n]
    for values in dist_pool.run(regression_on_ranks, world, split(y_true, lengths), split(y_pred, lengths)):
        assert values["mse"] == pytest.approx(sk.mean_squared_error(y_true, y_pred), rel=1e-12)
        assert values["rmse"] == pytest.approx(sk.root_mean_squared_error(y_true, y_pred), rel=1e-12)
        assert values["mae"] == pytest.approx(sk.mean_absolute_error(y_true, y_pred), rel=1e-12)
        assert values["r2"] == pytest.approx(sk.r2_score(y_true, y_pred), rel=1e-10)


def test_r2_of_a_constant_target_follows_sklearn():
    assert R2().evaluate(y_true=[2.0, 2.0], y_pred=[2.0, 2.0]) == sk.r2_score([2.0, 2.0], [2.0, 2.0])
    assert R2().evaluate(y_true=[2.0, 2.0], y_pred=[1.0, 2.0]) == sk.r2_score([2.0, 2.0], [1.0, 2.0])


def perplexity_on_ranks(rank, world, logits, tokens):
    ppl = Perplexity(ignore_index=-100)
    for l, t in zip(logits[rank], tokens[rank]):
        ppl(y_score=torch.as_tensor(l), y_true=torch.as_tensor(t))
    return ppl.calculate()


@pytest.mark.parametrize("world", [1, 2, 3])
def test_perplexity_is_token_weighted_and_ignores_ignore_index(dist_pool, world):
    from torchmetrics.functional.text import perplexity

    rng = np.random.default_rng(world)
    batches = []
    for i in range(5):  # batches of different sequence lengths
        logits = rng.normal(size=(2, 3 + i, 11))
        tokens = rng.integers(0, 11, (2, 3 + i))
        tokens[0, : i + 1] = -100
        batches.append((logits, tokens))
    per_rank_l = [[b[0] for b in batches[r::world]] for r in range(world)]
    per_rank_t = [[b[1] for b in batches[r::world]] for r in range(world)]
    nll, count = 0.0, 0
    for logits, tokens in batches:
        value = perplexity(torch.as_tensor(logits), torch.as_tensor(tokens), ignore_index=-100).item()
        n = int((tokens != -100).sum())
        nll, count = nll + math.log(value) * n, count + n
    for value in dist_pool.run(perplexity_on_ranks, world, per_rank_l, per_rank_t):
        assert value == pytest.approx(math.exp(nll / count), rel=1e-6)


def test_every_metric_has_a_name_and_a_direction():
    made = [Accuracy(), Accuracy(top_k=3), Precision(), Recall("macro"), F1("weighted"), FBeta(0.5), ConfusionMatrix(),
            AUROC(), AveragePrecision(num_classes=3), BinnedAUROC(), BinnedAveragePrecision(), MSE(), RMSE(), MAE(),
            R2(), Perplexity()]
    names = [m.name for m in made]
    assert names == ["accuracy", "top3_accuracy", "precision", "recall_macro", "f1_weighted", "f0.5", "confusion_matrix",
                     "auroc", "average_precision_macro", "auroc_binned", "average_precision_binned", "mse", "rmse",
                     "mae", "r2", "perplexity"]
    better = [m.higher_is_better for m in made]
    assert better == [True] * 6 + [False] + [True] * 4 + [False] * 3 + [True, False]


def test_metrics_collection_names_primary_and_predicts():
    metrics = Metrics({"acc": Accuracy(), "f1": F1("macro", num_classes=3)}, primary="f1")
    assert metrics.name == "f1" and metrics.primary == "f1" and metrics.higher_is_better
    scores = torch.tensor([[0.1, 0.8, 0.1], [0.7, 0.2, 0.1]])
    assert torch.equal(metrics.predict(scores), torch.tensor([1, 0]))
    metrics(y_score=scores, y_true=torch.tensor([1, 1]))
    values = calculate([metrics, Mean()]) if False else metrics.calculate()
    assert values == pytest.approx({"acc": 0.5, "f1": sk.f1_score([1, 1], [1, 0], average="macro")})
    assert Metrics([MSE(), MAE()]).name == "mse" and not Metrics([MSE(), MAE()]).higher_is_better
    with pytest.raises(ValueError, match="two metrics named 'mse'"):
        Metrics([MSE(), MSE()])
    with pytest.raises(ValueError, match="primary 'x' is not one of"):
        Metrics([MSE()], primary="x")
    metrics.reset()
    with pytest.warns(RuntimeWarning):
        assert all(math.isnan(v) for v in metrics.calculate().values())


def collections_keyed_differently(rank, world):
    keys = ("a", "b") if rank == 0 else ("b", "a")
    metrics = Metrics({keys[0]: MSE(), keys[1]: MAE()})
    metrics(y_pred=torch.tensor([1.0]), y_true=torch.tensor([0.0]))
    try:
        calculate([metrics])
    except Exception as error:  # DivergenceError
        return type(error).__name__
    return "no error"


def test_collections_keyed_differently_on_two_ranks_raise_everywhere(dist_pool):
    assert dist_pool.run(collections_keyed_differently, 2) == ["DivergenceError"] * 2


def many_of_one_kind(rank, world, empty_one):
    rng = np.random.default_rng(rank)
    metrics = {f"f1_{i}": F1("macro", num_classes=4) for i in range(6)}  # runs of one kind: batched
    metrics |= {f"acc_{i}": Accuracy() for i in range(6)} | {f"mse_{i}": MSE() for i in range(6)}
    data = []
    for i in range(6):
        t, p = rng.integers(0, 4, 9 + i), rng.integers(0, 4, 9 + i)
        data.append((t, p))
        if empty_one and i == 3:
            continue  # one metric of each kind with no data anywhere: finished one by one (NaN, warning)
        metrics[f"f1_{i}"](y_pred=torch.as_tensor(p), y_true=torch.as_tensor(t))
        metrics[f"acc_{i}"](y_pred=torch.as_tensor(p), y_true=torch.as_tensor(t))
        metrics[f"mse_{i}"](y_pred=torch.as_tensor(p, dtype=torch.float64), y_true=torch.as_tensor(t, dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return calculate(metrics), data


@pytest.mark.parametrize("empty_one", [False, True])
def test_many_metrics_of_one_kind_finished_together_are_each_exact(dist_pool, empty_one):
    results = dist_pool.run(many_of_one_kind, 2, empty_one)
    for values, _ in results:
        for i in range(6):
            t = np.concatenate([data[i][0] for _, data in results])
            p = np.concatenate([data[i][1] for _, data in results])
            if empty_one and i == 3:
                assert math.isnan(values[f"f1_{i}"]) and math.isnan(values[f"acc_{i}"])
                continue
            assert values[f"f1_{i}"] == pytest.approx(sk.f1_score(t, p, average="macro"))
            assert values[f"acc_{i}"] == pytest.approx(sk.accuracy_score(t, p))
            assert values[f"mse_{i}"] == pytest.approx(sk.mean_squared_error(t, p))


def test_is_metric_accepts_every_metric_and_collections():
    from distlearn.accumulators import Mean as PlainMean
    from distlearn.metrics import is_metric

    assert all(is_metric(m) for m in (Accuracy(), AUROC(), BinnedAUROC(), Perplexity(), Metrics([MSE()])))
    assert not is_metric(PlainMean()) and not is_metric("accuracy")


# --------------------------------------------------------------------------- #
# Precision, recall and F-scores with no data anywhere, or with an undefined ratio
# --------------------------------------------------------------------------- #


def _confusion_family() -> dict:
    members = {}
    for cls, short in ((Precision, "p"), (Recall, "r"), (F1, "f1")):
        members[f"{short}_binary"] = cls()
        for avg in ("micro", "macro", "weighted"):
            members[f"{short}_{avg}_grown"] = cls(avg)  # num_classes=None
            members[f"{short}_{avg}_3"] = cls(avg, num_classes=3)
        for avg in ("micro", "macro", "weighted", "none"):
            members[f"{short}_{avg}_labels"] = cls(avg, num_labels=3)
    members["f2_micro_3"] = FBeta(2.0, "micro", num_classes=3)
    return members


def _calculate_warned(metrics: dict) -> tuple[dict, list[str]]:
    """calculate(metrics) and the messages of the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = calculate(metrics)
    return values, [str(w.message) for w in caught]


def nothing_anywhere(rank, world):
    return _calculate_warned(_confusion_family())


@pytest.mark.parametrize("world", [1, 2, 3])
def test_no_sample_on_any_rank_is_nan_for_every_average_as_the_warning_says(dist_pool, world):
    """Micro and binary scores were 0.0 while the warning said NaN; now value and warning agree."""
    for values, warned in dist_pool.run(nothing_anywhere, world):
        for name, value in values.items():
            value = torch.as_tensor(value)
            assert value.numel() and torch.isnan(value).all(), f"{name}: {value}"
        assert len(warned) == len(values) and all("the result is NaN" in w for w in warned), warned
    # scikit-learn gives no number for empty input (its zero_division is for ratios undefined on data)
    for score in (sk.precision_score, sk.recall_score, sk.f1_score):
        with pytest.raises(ValueError, match="empty"):
            score(np.array([], dtype=int), np.array([], dtype=int), average="micro")


def undefined_on_data(rank, world, y_true, y_pred, labels_true, labels_pred):
    metrics = {"precision": Precision(), "f1": F1(), "precision_micro_labels": Precision("micro", num_labels=3),
               "recall_micro_labels": Recall("micro", num_labels=3), "f1_none_labels": F1("none", num_labels=3)}
    for name, metric in metrics.items():
        if name.endswith("labels"):
            metric(y_pred=torch.as_tensor(labels_pred[rank]), y_true=torch.as_tensor(labels_true[rank]))
        else:
            metric(y_pred=torch.as_tensor(y_pred[rank]), y_true=torch.as_tensor(y_true[rank]))
    return _calculate_warned(metrics)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_a_ratio_undefined_on_data_is_zero_as_sklearns_default_zero_division(dist_pool, world):
    y_true, y_pred = np.array([1, 0, 1, 0, 0, 1]), np.zeros(6, dtype=int)  # no predicted positive
    labels_true = np.zeros((6, 3), dtype=int)
    labels_true[0, 2] = 1
    labels_pred = np.zeros((6, 3), dtype=int)  # nothing predicted: micro precision is 0/0
    lengths = [6 // world] * world
    results = dist_pool.run(undefined_on_data, world, split(y_true, lengths), split(y_pred, lengths),
                            split(labels_true, lengths), split(labels_pred, lengths))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's UndefinedMetricWarning
        expected = {
            "precision": sk.precision_score(y_true, y_pred), "f1": sk.f1_score(y_true, y_pred),
            "precision_micro_labels": sk.precision_score(labels_true, labels_pred, average="micro"),
            "recall_micro_labels": sk.recall_score(labels_true, labels_pred, average="micro"),
            "f1_none_labels": sk.f1_score(labels_true, labels_pred, average=None),
        }
    for values, warned in results:
        assert not warned  # data exists: no "nothing was accumulated" warning
        for name, want in expected.items():
            got = values[name].numpy() if name.endswith("none_labels") else values[name]
            np.testing.assert_array_equal(got, want, err_msg=name)
        assert values["precision"] == 0.0 and values["precision_micro_labels"] == 0.0


# --------------------------------------------------------------------------- #
# A fixed number of classes: calculate()'s cached plan
# --------------------------------------------------------------------------- #


def _fixed_size(k: int) -> dict:
    return {"f1_macro": F1("macro", num_classes=k), "precision_micro": Precision("micro", num_classes=k),
            "recall_weighted": Recall("weighted", num_classes=k), "f2_macro": FBeta(2.0, "macro", num_classes=k),
            "f1_binary": F1(), "f1_labels_macro": F1("macro", num_labels=2), "accuracy": Accuracy()}


def planned_confusion_metrics(rank, world, k, y_true, y_pred, steps):
    from distlearn.accumulators import collective
    from distlearn.accumulators.plan import LAST_PLAN

    metrics = _fixed_size(k)
    flat = list(metrics.values())
    assert not any(m._growable for m in flat) and F1("macro")._growable
    out = []
    for step in range(steps):  # the plan is made on the first call and reused after
        t, p = torch.as_tensor(y_true[step][rank]), torch.as_tensor(y_pred[step][rank])
        for name, metric in metrics.items():
            if name == "f1_binary":
                metric(y_pred=p % 2, y_true=t % 2)
            elif name == "f1_labels_macro":
                metric(y_pred=torch.stack([p % 2, (p > 1).long()], 1), y_true=torch.stack([t % 2, (t > 1).long()], 1))
            else:
                metric(y_pred=p, y_true=t)
        planned = calculate(flat)
        plan = LAST_PLAN[0]
        used = world > 1 and plan is not None and plan.accs[0] is flat[0] and len(plan.accs) == len(flat)
        general_path = collective.plan_for
        collective.plan_for = lambda *args: None
        try:
            general = calculate(flat)
        finally:
            collective.plan_for = general_path
        out.append((dict(zip(metrics, planned)), dict(zip(metrics, general)), used))
    return out


@pytest.mark.parametrize("world", [1, 2, 3])
def test_a_fixed_number_of_classes_takes_the_plan_with_unchanged_results(dist_pool, world):
    """F1 & co. with num_classes (or binary, or num_labels) are fixed-size: planned, exact, as scikit-learn."""
    k, steps = 4, 3
    rng = np.random.default_rng(world)
    lengths = [5, 0, 7][:world] if world == 3 else [6] * world  # a rank without data in one case
    y_true = [split(rng.integers(0, k, sum(lengths)), lengths) for _ in range(steps)]
    y_pred = [split(rng.integers(0, k, sum(lengths)), lengths) for _ in range(steps)]
    for per_rank in dist_pool.run(planned_confusion_metrics, world, k, y_true, y_pred, steps):
        for step, (planned, general, used) in enumerate(per_rank):
            assert used == (world > 1), f"step {step}: the plan was not used"
            assert planned == general  # bit for bit: the same sums finished by the same code
            t = np.concatenate([np.concatenate(y_true[s]) for s in range(step + 1)])
            p = np.concatenate([np.concatenate(y_pred[s]) for s in range(step + 1)])
            labels = sorted(set(t) | set(p))
            assert planned["f1_macro"] == pytest.approx(sk.f1_score(t, p, average="macro", labels=labels), rel=1e-12)
            assert planned["precision_micro"] == pytest.approx(sk.precision_score(t, p, average="micro"), rel=1e-12)
            assert planned["recall_weighted"] == pytest.approx(
                sk.recall_score(t, p, average="weighted", labels=labels, zero_division=0), rel=1e-12)
            assert planned["f2_macro"] == pytest.approx(
                sk.fbeta_score(t, p, beta=2.0, average="macro", labels=labels, zero_division=0), rel=1e-12)
            assert planned["f1_binary"] == pytest.approx(sk.f1_score(t % 2, p % 2, zero_division=0), rel=1e-12)
            ml_t, ml_p = np.stack([t % 2, t > 1], 1).astype(int), np.stack([p % 2, p > 1], 1).astype(int)
            assert planned["f1_labels_macro"] == pytest.approx(
                sk.f1_score(ml_t, ml_p, average="macro", zero_division=0), rel=1e-12)
            assert planned["accuracy"] == pytest.approx(sk.accuracy_score(t, p), rel=1e-12)


@pytest.mark.parametrize(
    "make, shapes",
    [
        (lambda: F1(), {"confusion": (2, 2), "out_of_range": ()}),
        (lambda: Precision("macro"), {"confusion": (0, 0), "out_of_range": ()}),
        (lambda: Recall("weighted", num_classes=3), {"confusion": (3, 3), "out_of_range": ()}),
        (lambda: FBeta(2.0, "none", num_labels=4), {"counts": (4, 4), "out_of_range": ()}),
        (lambda: ConfusionMatrix(num_classes=3), {"confusion": (3, 3), "out_of_range": ()}),
        (lambda: Accuracy(), {"correct": (), "total": ()}),
        (lambda: Accuracy(top_k=2, ignore_index=-100), {"correct": (), "total": ()}),
        (lambda: Accuracy(num_labels=3, average="none"), {"correct": (3,), "total": ()}),
    ],
)
def test_each_task_keeps_the_state_layout_checkpoints_hold(make, shapes):
    """Checkpoints hold a metric's state dict mid-epoch: the task a metric picks changes none of its keys or shapes."""
    metric = make()
    state = metric.state_dict()
    assert set(state) == {"states", "kind", "device"} and state["kind"] == "float64"
    assert {name: tuple(s.shape) for name, s in state["states"].items()} == shapes
    assert all(s.dtype == torch.float64 for s in state["states"].values())
    fresh = make()
    fresh.load_state_dict(state)
    assert type(fresh) is type(metric) and fresh.name == metric.name


def test_the_task_a_metric_picks_keeps_its_class_and_name_in_messages():
    precision = Precision("micro", num_labels=2)
    assert type(precision) is Precision and isinstance(F1("macro", num_labels=2), FBeta)
    with pytest.raises(ValueError, match=r"^Precision\(num_labels=2\): y_true and y_pred"):
        precision.update(y_true=torch.ones(3, 3), y_pred=torch.ones(3, 3))
    expected = r"^Recall\(average='binary'\): 1 labels .* outside \[0, 2\); binary Recall takes labels 0 and 1"
    with pytest.raises(ValueError, match=expected):
        recall = Recall()
        recall.update(y_true=[0, 2], y_pred=[0, 1])
        recall.calculate()
    with pytest.raises(ValueError, match=r"^AUROC\(num_classes=3\): y_score has 2 columns"):
        AUROC(num_classes=3).update(y_true=[0, 1], y_score=torch.rand(2, 2))


@pytest.mark.parametrize("top_k", [1, 2])
def test_an_ignore_index_set_after_construction_counts_from_then_on(top_k):
    """The learner gives a token task's Accuracy its ignore_index after construction (batches.give_ignore_index)."""
    y_true, y_score = torch.tensor([0, -1, 2, 1, -1]), torch.rand(5, 3, generator=torch.Generator().manual_seed(0))
    late, built = Accuracy(top_k=top_k), Accuracy(top_k=top_k, ignore_index=-1)
    late.ignore_index = -1
    late.update(y_true=y_true, y_score=y_score), built.update(y_true=y_true, y_score=y_score)
    assert late.ignore_index == -1 and float(late.value()) == float(built.value())
    assert late.state_dict()["states"]["total"] == 3


def binned_on_ranks(rank, world, y_true, y_score, thresholds):
    metrics = Metrics([BinnedAUROC(thresholds=thresholds), BinnedAveragePrecision(thresholds=thresholds)])
    if len(y_true[rank]):
        metrics(y_score=torch.as_tensor(y_score[rank]), y_true=torch.as_tensor(y_true[rank]))
    return metrics.calculate()


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("thresholds", [5, [0.1, 0.3, 0.6, 0.8]])
def test_binned_scores_exactly_on_a_threshold_count_at_it(dist_pool, world, thresholds):
    # Every score sits exactly on a threshold, so the binned curve is the exact one: equal to
    # scikit-learn's and to torchmetrics' binned metrics only if a score t counts at threshold t (>=).
    import torchmetrics.functional.classification as tmc

    grid = np.linspace(0, 1, thresholds) if isinstance(thresholds, int) else np.array(thresholds)
    rng = np.random.default_rng(len(grid) + world)
    y_true = rng.integers(0, 2, 80)
    # below the top threshold, where the binned curve reaches (0, 0) as the exact one does
    y_score = grid[np.clip(rng.integers(0, len(grid) - 1, 80) + y_true, 0, len(grid) - 2)]
    args = (torch.as_tensor(y_score, dtype=torch.float32), torch.as_tensor(y_true))
    tm_thresholds = thresholds if isinstance(thresholds, int) else torch.tensor(thresholds)
    auroc = float(tmc.binary_auroc(*args, thresholds=tm_thresholds))
    ap = float(tmc.binary_average_precision(*args, thresholds=tm_thresholds))
    assert auroc == pytest.approx(sk.roc_auc_score(y_true, y_score), rel=1e-6)
    assert ap == pytest.approx(sk.average_precision_score(y_true, y_score), rel=1e-6)
    lengths = [80] if world == 1 else [30, 50]
    splits = np.cumsum(lengths)[:-1]
    exact_auroc, exact_ap = sk.roc_auc_score(y_true, y_score), sk.average_precision_score(y_true, y_score)
    results = dist_pool.run(binned_on_ranks, world, np.split(y_true, splits), np.split(y_score, splits), thresholds)
    for values in results:
        assert values["auroc_binned"] == pytest.approx(exact_auroc, rel=1e-12)
        assert values["average_precision_binned"] == pytest.approx(exact_ap, rel=1e-12)
