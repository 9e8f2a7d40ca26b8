"""Token labels without a host sync per training step.

Padded token labels (-100) used to be taken out of the metric's inputs by boolean indexing, whose
output size depends on the data: a host sync on every training step. A metric with ``ignore_index``
(Accuracy, Perplexity) leaves them out with a mask instead, and the learner gives the tokens to it
unmasked. Checked here: Accuracy(ignore_index) against scikit-learn on the kept tokens in real
process groups of 1-3 ranks; the count of syncs of a token-label training run does not grow with
its steps; the learner's records are the same numbers as on the masking path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import reset_accelerate
from host_syncs import HostSyncs
from sklearn.metrics import accuracy_score, top_k_accuracy_score
from test_batches import VOCAB, Sequences, TinyLM, pad_collate
from torch import nn
from torch.utils.data import DataLoader

from distlearn import BackwardLearner
from distlearn.accumulators import calculate
from distlearn.training.batches import BatchRunner, give_ignore_index, leaves_out_ignored
from distlearn.metrics import F1, Accuracy, Metrics, Perplexity

IGNORE = -100


# --------------------------------------------------------------------------- #
# Accuracy(ignore_index) is exact across ranks
# --------------------------------------------------------------------------- #


def _token_batches(rank_lengths: list[list[int]], seed: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Per rank, batches of (logits (2, T, V), labels (2, T)) with a padded tail of -100 in each row."""
    rng = np.random.default_rng(seed)
    ranks = []
    for lengths in rank_lengths:
        batches = []
        for T in lengths:
            labels = rng.integers(0, VOCAB, (2, T))
            labels[0, rng.integers(0, T + 1):] = IGNORE
            labels[1, rng.integers(0, T + 1):] = IGNORE  # a batch may hold no target at all
            batches.append((rng.normal(size=(2, T, VOCAB)), labels))
        ranks.append(batches)
    return ranks


def accuracy_on_ranks(rank: int, world: int, ranks: list) -> dict:
    metrics = {"top1": Accuracy(ignore_index=IGNORE), "top3": Accuracy(top_k=3, ignore_index=IGNORE)}
    for logits, labels in ranks[rank]:  # a rank with no batch updates nothing, and still reduces
        scores, target = torch.as_tensor(logits), torch.as_tensor(labels)
        metrics["top1"].update(y_score=scores, y_true=target)  # (n, T, V) against (n, T)
        metrics["top3"].update(y_score=scores.reshape(-1, VOCAB), y_true=target.reshape(-1))
    return calculate(metrics)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_accuracy_with_ignore_index_equals_sklearn_on_the_kept_tokens(dist_pool, world):
    lengths = [[5, 9, 2], [], [7]][:world] if world > 1 else [[5, 9, 2, 7]]  # uneven; rank 1 of 3 has no data
    ranks = _token_batches(lengths, seed=world)
    scores = np.concatenate([l.reshape(-1, VOCAB) for r in ranks for l, _ in r])
    labels = np.concatenate([t.reshape(-1) for r in ranks for _, t in r])
    keep = labels != IGNORE
    assert 0 < keep.sum() < keep.size
    top1 = accuracy_score(labels[keep], scores[keep].argmax(1))
    top3 = top_k_accuracy_score(labels[keep], scores[keep], k=3, labels=range(VOCAB))
    results = dist_pool.run(accuracy_on_ranks, world, ranks)
    for result in results:
        assert result == results[0]
        assert result["top1"] == pytest.approx(top1, abs=1e-12) and result["top3"] == pytest.approx(top3, abs=1e-12)
    without = Accuracy().evaluate(y_true=torch.as_tensor(labels), y_score=torch.as_tensor(scores))
    assert without != pytest.approx(top1)  # the ignored tokens do count without ignore_index


def test_accuracy_ignore_index_is_refused_where_it_has_no_meaning():
    with pytest.raises(ValueError, match=r"num_labels=3.*ignore_index=-100.*Drop ignore_index"):
        Accuracy(num_labels=3, ignore_index=IGNORE)
    with pytest.raises(ValueError, match="ignore_index must be an int or None, got 'x'"):
        Accuracy(ignore_index="x")
    one = Accuracy(ignore_index=IGNORE).evaluate(y_true=torch.tensor([IGNORE, 2, 1]), y_pred=torch.tensor([0, 2, 0]))
    assert one == 0.5  # 1 of the 2 kept labels


def test_which_metrics_take_the_tokens_unmasked():
    assert leaves_out_ignored(Accuracy(), IGNORE) and leaves_out_ignored(Perplexity(), IGNORE)
    assert leaves_out_ignored(Accuracy(ignore_index=IGNORE), IGNORE)
    assert leaves_out_ignored(Metrics([Accuracy(), Perplexity(ignore_index=IGNORE)]), IGNORE)
    assert not leaves_out_ignored(Accuracy(ignore_index=-1), IGNORE)  # another value: masking, as before
    assert not leaves_out_ignored(Accuracy(num_labels=2), IGNORE)
    assert not leaves_out_ignored(Metrics([Accuracy(), F1("macro")]), IGNORE)  # F1 would count them
    assert not leaves_out_ignored(None, IGNORE)
    metric = Metrics([Accuracy(), Perplexity(ignore_index=IGNORE)])
    give_ignore_index(metric, IGNORE)
    assert metric["accuracy"].ignore_index == IGNORE == metric["perplexity"].ignore_index


def test_batches_report_every_token_with_keep_ignored():
    batches = BatchRunner(nn.CrossEntropyLoss(), label_shift=1)
    batch = pad_collate([Sequences()[i] for i in range(3)])
    model = TinyLM()
    batches.problem(batch, "loader", model)
    step = batches.step(model, batch)

    class Whole:  # not a padded last batch
        gradient_state = type("State", (), {"end_of_dataloader": False, "remainder": -1})()
        process_index = 0

    kept, every = batches.real(Whole(), step, model), batches.real(Whole(), step, model, keep_ignored=True)
    labels = batch["labels"][:, 1:].reshape(-1)
    assert kept.ignored is None and every.ignored == IGNORE
    assert torch.equal(every.target, labels) and torch.equal(kept.target, labels[labels != IGNORE])
    assert every.scores.shape == (labels.numel(), VOCAB) and torch.equal(every.scores[labels != IGNORE], kept.scores)


# --------------------------------------------------------------------------- #
# No host sync per training step
# --------------------------------------------------------------------------- #


def _train_tokens(n_sequences: int, metric, label_shift: int = 0) -> int:
    reset_accelerate()
    learner = BackwardLearner(
        n_epochs=1, loss=nn.CrossEntropyLoss(), max_grad_norm=1.0, display_every_n_steps=0, label_shift=label_shift,
        optimizer_configs={"optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lr": 0.1}},
    )
    loader = DataLoader(Sequences(n_sequences), batch_size=4, shuffle=True, collate_fn=pad_collate)
    with HostSyncs() as counted:
        learner.train(TinyLM(), loader, metric=metric, test_check=False, disable_tqdm=True)
    return counted.n


@pytest.mark.parametrize(
    "metric",
    [Accuracy(), Metrics([Accuracy(top_k=2), Perplexity()]), Accuracy(ignore_index=IGNORE)],
    ids=["accuracy", "top2_and_perplexity", "accuracy_ignore_index"],
)
def test_a_token_label_training_run_syncs_no_more_with_more_steps(fresh_accelerate, metric):
    """The syncs of 6 and 12 steps are equal (tests/host_syncs.py: boolean indexing counts too)."""

    def syncs(steps: int) -> int:
        return _train_tokens(4 * steps, metric, label_shift=1)

    syncs(3)  # warm-up
    few, many = syncs(6), syncs(12)
    assert few == many, f"{few} host syncs for 6 steps, {many} for 12: something syncs every step"


# --------------------------------------------------------------------------- #
# The same records as the masking path
# --------------------------------------------------------------------------- #


def train_records(rank: int, world: int, metric, label_shift: int) -> dict:
    """2 epochs of TinyLM (lr 0.5: the weights move) on padded token batches; the record without times."""
    reset_accelerate()
    loader = DataLoader(Sequences(), batch_size=max(1, 6 // world), shuffle=True, collate_fn=pad_collate)
    test = DataLoader(Sequences(seed=1), batch_size=4, collate_fn=pad_collate)
    learner = BackwardLearner(
        n_epochs=2, loss=nn.CrossEntropyLoss(), label_shift=label_shift, display_every_n_steps=2,
        optimizer_configs={"optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lr": 0.5}},
    )
    record = learner.train(TinyLM(), {"train_loader": loader, "test_loader": test}, metric=metric, disable_tqdm=True)
    assert all(m.ignore_index in (None, -1) for m in metric.metrics.values())  # the user's object is left alone
    return _numbers(record["training"])


def _numbers(value):
    """The record without its clock readings (times, rates, the throughput block)."""
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()
                if "time" not in str(k) and "per_second" not in str(k) and k != "throughput"}
    return value


@pytest.mark.parametrize("label_shift", [0, 1])
def test_records_are_the_numbers_of_the_masking_path(dist_pool, label_shift):
    """Accuracy() and Perplexity() take the tokens unmasked; with ignore_index=-1 (never a label here)
    they take the masking path of before. Same data and seed: the same records."""
    for world in (1, 2):
        unmasked = dist_pool.run(
            train_records, world, Metrics([Accuracy(), Accuracy(top_k=2), Perplexity()]), label_shift
        )
        masked = dist_pool.run(
            train_records, world,
            Metrics([Accuracy(ignore_index=-1), Accuracy(top_k=2, ignore_index=-1), Perplexity(ignore_index=-1)]),
            label_shift,
        )
        assert unmasked[0] == unmasked[-1] and masked[0] == masked[-1]
        for epoch, got in unmasked[0].items():
            want = masked[0][epoch]
            # Perplexity's float64 sum over the tokens adds zeros for the ignored ones: the order of the
            # additions may move its last bits; counts (accuracy) and every loss are bit-identical.
            assert got["train_scores"].pop("perplexity") == pytest.approx(want["train_scores"].pop("perplexity"),
                                                                          rel=1e-13)
            assert got == want, (world, epoch)
            assert 0 < got["train_scores"]["accuracy"] < got["train_scores"]["top2_accuracy"] < 1
