"""Batch forms, losses from the learner / the model / loss_fn, and per-token exactness on 1, 2, 3 ranks.

The learner runs inside the session's pool of real gloo process groups. Sequences have uneven
lengths and each batch is padded to its own longest row, so the ranks' batches are padded
differently for every number of processes; with a learning rate of 0 the weights stay fixed and
every reported loss must equal the per-token mean computed directly on the whole data.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from distlearn.training.batches import BatchRunner
from distlearn.training.outputs import describe, flat_tokens, token_labels

VOCAB, N_SEQ, GLOBAL_BATCH = 11, 23, 6  # 23 = 3 full global batches + 5: the last one is padded by Accelerate


class Sequences(Dataset):
    """Token sequences of lengths 2..9; next-token targets."""

    def __init__(self, n: int = N_SEQ, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.rows = [torch.randint(0, VOCAB, (int(torch.randint(3, 11, (1,), generator=g)),), generator=g)
                     for _ in range(n)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        return {"input_ids": row[:-1], "labels": row[1:]}


def pad_collate(items: list[dict]) -> dict:
    """Pad to the batch's longest row: inputs with 0, labels with -100 (ignored)."""
    longest = max(len(it["input_ids"]) for it in items)
    ids = torch.zeros(len(items), longest, dtype=torch.long)
    labels = torch.full((len(items), longest), -100, dtype=torch.long)
    mask = torch.zeros(len(items), longest, dtype=torch.long)
    for r, it in enumerate(items):
        n = len(it["input_ids"])
        ids[r, :n], labels[r, :n], mask[r, :n] = it["input_ids"], it["labels"], 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pad_pair(items: list[dict]) -> tuple:
    """(input_ids, labels) batches: the model is called as model(input_ids)."""
    batch = pad_collate(items)
    return batch["input_ids"], batch["labels"]


class TinyLM(nn.Module):
    """Embedding -> linear per position; computes its own loss when given labels (as Hugging Face models do)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.embed = nn.Embedding(VOCAB, 16)
        self.head = nn.Linear(16, VOCAB)

    def forward(self, input_ids, attention_mask=None, labels=None):
        logits = self.head(torch.tanh(self.embed(input_ids)))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100)
        return out


def reference_loss() -> tuple[float, list[int]]:
    """The per-token mean loss over the whole data set with the initial weights, and the target tokens."""
    model, data = TinyLM(), Sequences()
    total, count, targets = 0.0, 0, []
    with torch.no_grad():
        for i in range(len(data)):
            item = data[i]
            logits = model(item["input_ids"][None])["logits"][0]
            total += nn.functional.cross_entropy(logits.double(), item["labels"], reduction="sum").item()
            count += len(item["labels"])
            targets += item["labels"].tolist()
    return total / count, targets


def train_lm(rank: int, world: int, mode: str) -> dict:
    """Train TinyLM with lr 0 on dict batches; the loss from the learner, the model or loss_fn."""
    from distlearn.training.learner import BackwardLearner

    collate = pad_pair if mode == "pair" else pad_collate
    loader = DataLoader(Sequences(), batch_size=GLOBAL_BATCH // world, shuffle=True, collate_fn=collate)
    test = DataLoader(Sequences(), batch_size=4, collate_fn=collate)
    kwargs: dict = {}
    if mode in ("learner", "pair"):
        kwargs["loss"] = nn.CrossEntropyLoss()  # on (B, T, V) logits and (B, T) labels: flattened
    elif mode == "loss_fn":
        def loss_fn(model, batch):
            out = model(**batch)
            return out["loss"], out

        kwargs["loss_fn"] = loss_fn
    learner = BackwardLearner(
        n_epochs=2, optimizer_configs={"optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lr": 0.0}},
        display_every_n_steps=2, **kwargs,
    )
    record = learner.train(TinyLM(), {"train_loader": loader, "test_loader": test}, disable_tqdm=True)
    full = learner.test(TinyLM(), test, return_scores=False)
    return {
        "train_loss": [record["training"][e]["train_loss"] for e in (0, 1)],
        "samples": record["training"][0]["samples"],
        "test_loss": record["training"][1]["test_result"]["test_loss"],
        "y_true": full["y_true"],
        "y_pred_len": len(full["y_pred"]),
        "y_score": full["y_score"],
        "full_loss": full["test_loss"],
    }


@pytest.mark.parametrize("mode", ["learner", "pair", "model", "loss_fn"])
def test_per_token_loss_is_exact_on_1_2_3_processes_with_uneven_padding(dist_pool, mode):
    expected, targets = reference_loss()
    for world in (1, 2, 3):
        results = dist_pool.run(train_lm, world, mode)
        assert all(r == results[0] for r in results[1:]), f"ranks disagree on {world} processes"
        got = results[0]
        for loss in (*got["train_loss"], got["test_loss"], got["full_loss"]):
            assert math.isclose(loss, expected, rel_tol=1e-6), (mode, world, loss, expected)
        assert got["samples"] == N_SEQ  # Accelerate's repeated rows are not counted
        assert got["y_true"] == targets  # every target token once, in data set order, padding left out
        assert got["y_pred_len"] == len(targets) and got["y_score"] is None


def rows_rule(rank: int, world: int) -> dict:
    """Dict batches of rows (not tokens) through Accelerate's padding: the loss per row is exact."""
    from distlearn.training.learner import BackwardLearner

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(13, 4, generator=g), torch.randint(0, 3, (13,), generator=g)

    class DictData(Dataset):
        def __len__(self):
            return 13

        def __getitem__(self, i):
            return {"x": x[i], "target": y[i]}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x)

    learner = BackwardLearner(
        n_epochs=1, loss=nn.CrossEntropyLoss(), label_key="target",
        optimizer_configs={"optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lr": 0.0}},
    )
    loader = DataLoader(DictData(), batch_size=2, shuffle=True)  # 13 rows, 2 per rank: the last step is padded
    record = learner.train(Net(), {"train_loader": loader, "test_loader": DataLoader(DictData(), batch_size=3)},
                           disable_tqdm=True)
    result = learner.test(Net(), DataLoader(DictData(), batch_size=3))
    with torch.no_grad():
        expected = nn.functional.cross_entropy(Net()(x).double(), y).item()
    return {"train": record["training"][0]["train_loss"], "test": result["test_loss"], "expected": expected,
            "y_true": result["y_true"], "labels": y.tolist(), "n_score": len(result["y_score"]),
            "samples": record["training"][0]["samples"]}


def test_dict_batches_drop_padding_duplicates(dist_pool):
    for world in (2, 3):
        for got in dist_pool.run(rows_rule, world):
            assert math.isclose(got["train"], got["expected"], rel_tol=1e-6)
            assert math.isclose(got["test"], got["expected"], rel_tol=1e-6)
            assert got["y_true"] == got["labels"] and got["n_score"] == 13 and got["samples"] == 13


def bad_batches(rank: int, world: int, case: str) -> str:
    """A batch form the learner cannot use: every rank raises, none waits."""
    from distlearn.training.learner import BackwardLearner

    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    if case == "dict_without_labels":
        data = [{"x": x[i]} for i in range(8)]
    elif case == "one_rank_string":
        data = [(x[i], y[i]) if rank != world - 1 else (x[i], "label") for i in range(8)]
    else:  # three items for a one-input model
        data = [(x[i], x[i], y[i]) for i in range(8)]
    learner = BackwardLearner(
        n_epochs=1, loss=nn.CrossEntropyLoss(),
        optimizer_configs={"optimizer_class": "torch.optim.SGD", "optimizer_parameters": {"lr": 0.1}},
    )
    try:
        learner.train(nn.Linear(4, 3), DataLoader(data, batch_size=2), disable_tqdm=True)
    except ValueError as error:
        return str(error)
    return "no error"


@pytest.mark.parametrize("case", ["dict_without_labels", "one_rank_string", "too_many_inputs"])
def test_a_bad_batch_raises_on_every_rank_naming_the_shapes(dist_pool, case):
    messages = dist_pool.run(bad_batches, 2, case)
    for message in messages:
        assert "no error" != message
    if case == "dict_without_labels":
        assert all("{'x': Tensor(2, 4)}" in m and "'labels'" in m for m in messages)
    elif case == "one_rank_string":
        assert all("(Tensor(2, 4), tuple)" in m for m in messages)  # the default collate keeps the strings
    else:
        assert all("Tensor(2, 4), Tensor(2, 4), Tensor(2,)" in m and "Linear.forward" in m for m in messages)


def test_several_inputs_are_passed_positionally():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(5, 2)

        def forward(self, left, right):
            return self.a(left) + self.b(right)

    batches = BatchRunner(nn.CrossEntropyLoss())
    batch = (torch.randn(4, 3), torch.randn(4, 5), torch.tensor([0, 1, 1, 0]))
    assert batches.problem(batch, "loader", Two()) is None
    step = batches.step(Two(), batch)
    assert step.rows == 4 and step.loss.dim() == 0 and batches.form == "inputs"
    with pytest.raises(ValueError, match="batch form changed"):
        batches.step(Two(), {"left": batch[0], "labels": batch[2]})


def test_token_helpers():
    logits, labels = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    flat_logits, flat_labels = flat_tokens(nn.CrossEntropyLoss(), logits, labels)
    assert flat_logits.shape == (10, 7) and flat_labels.shape == (10,)
    assert flat_tokens(nn.MSELoss(), logits, labels)[0].shape == (2, 5, 7)
    assert token_labels(labels) and not token_labels(labels[:, 0]) and not token_labels(labels.float())
    labels[0, 3:] = -100
    assert int(BatchRunner().weight(labels, 2)) == 8 and int(BatchRunner(label_shift=1).weight(labels, 2)) == 6
    assert BatchRunner().weight(labels[:, 0], 2) == 2
    assert describe({"a": torch.zeros(2, 3)}) == "a dict {'a': Tensor(2, 3)}"
    with pytest.raises(ValueError, match="no .loss"):
        from distlearn.training.outputs import model_loss

        model_loss(torch.zeros(2))


def test_reporting_the_last_batch_again_works_on_one_row_and_leaves_batch_norm_alone():
    class Norm(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm, self.lin = nn.BatchNorm1d(3), nn.Linear(3, 2)

        def forward(self, x, labels=None):
            out = self.lin(self.norm(x))
            return {"logits": out, "loss": nn.functional.cross_entropy(out, labels)}

    class LastBatch:  # what Accelerate's gradient state says on a padded last batch: 1 real row of 4 here
        gradient_state = type("State", (), {"end_of_dataloader": True, "remainder": 1})()
        process_index = 0

        @staticmethod
        def autocast():
            import contextlib

            return contextlib.nullcontext()

    model = Norm().train()
    batch = {"x": torch.randn(4, 3), "labels": torch.tensor([0, 1, 1, 0])}
    batches = BatchRunner()
    batches.problem(batch, "loader", model)
    step = batches.step(model, batch)
    before = model.norm.running_mean.clone(), model.norm.num_batches_tracked.clone()
    report = batches.real(LastBatch(), step, model)
    assert report.rows == 1 and report.weight == 1 and report.target.tolist() == [0]
    assert torch.equal(model.norm.running_mean, before[0]) and torch.equal(model.norm.num_batches_tracked, before[1])
    assert model.training and model.norm.training  # the mode is restored
