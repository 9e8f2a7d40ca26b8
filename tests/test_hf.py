"""Hugging Face models and data sets: tiny random models (no download) on dict batches, 1 and 2 processes."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import warm

pytest.importorskip("transformers")
pytest.importorskip("datasets")

VOCAB, N, GLOBAL_BATCH = 40, 24, 8  # 24 rows = 3 full global batches: the same steps on 1 and 2 processes


def tiny_bert_config() -> dict:
    return dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=32, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def token_rows(n: int = N, seed: int = 0) -> list[dict]:
    """Rows of uneven length; label 1 when token 5 occurs."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(1, VOCAB, (int(torch.randint(4, 12, (1,), generator=g)),), generator=g)
        rows.append({"input_ids": ids, "labels": torch.tensor(int((ids < 8).any()))})
    return rows


def pad(rows: list[dict]) -> dict:
    longest = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])], mask[i, : len(r["input_ids"])] = r["input_ids"], 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.stack([r["labels"] for r in rows])}


def train_bert(rank: int, world: int) -> dict:
    from torch.utils.data import DataLoader
    from transformers import BertConfig, BertForSequenceClassification

    from distlearn.training.learner import BackwardLearner
    from distlearn.metrics import Accuracy

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**tiny_bert_config()))
    loaders = {
        "train_loader": DataLoader(token_rows(), batch_size=GLOBAL_BATCH // world, shuffle=True, collate_fn=pad),
        "test_loader": DataLoader(token_rows(9, seed=1), batch_size=2, collate_fn=pad),  # 9: a padded last batch
    }
    learner = BackwardLearner(n_epochs=3, optimizer_configs={"optimizer_class": "torch.optim.AdamW",
                                                             "optimizer_parameters": {"lr": 1e-2}})
    record = learner.train(model, loaders, metric=Accuracy(), disable_tqdm=True)  # the loss is the model's own
    epochs = [record["training"][e] for e in range(3)]
    return {
        "train_loss": [e["train_loss"] for e in epochs],
        "train_score": [e["train_score"] for e in epochs],
        "test_loss": [e["test_result"]["test_loss"] for e in epochs],
        "test_score": [e["test_result"]["test_score"] for e in epochs],
        "y_true": learner.test(model, loaders["test_loader"])["y_true"],
        "samples": epochs[0]["samples"],
    }


def test_tiny_bert_trains_on_dict_batches_with_the_same_records_on_1_and_2_processes(dist_pool):
    one = dist_pool.run(train_bert, 1)[0]
    two = dist_pool.run(train_bert, 2)
    assert two[0] == two[1]
    for key in ("train_loss", "train_score", "test_loss", "test_score"):
        for a, b in zip(one[key], two[0][key]):
            assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6), (key, one[key], two[0][key])
    assert one["train_loss"][-1] < one["train_loss"][0]
    assert one["y_true"] == two[0]["y_true"] == [int(r["labels"]) for r in token_rows(9, seed=1)]
    assert one["samples"] == two[0]["samples"] == N


def write_tokenizer(folder) -> str:
    """A word-level tokenizer file made here (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[PAD]", "[UNK]"] + [f"w{i}" for i in range(VOCAB - 2)]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    path = folder / "tokenizer.json"
    tokenizer.save(str(path))
    return str(path)


def text_table(n: int = 30):
    g = torch.Generator().manual_seed(2)
    texts, labels = [], []
    for _ in range(n):
        ids = torch.randint(0, VOCAB - 2, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g)
        texts.append(" ".join(f"w{int(i)}" for i in ids))
        labels.append(int((ids < 4).any()))
    return {"text": texts, "label": labels, "extra": list(range(n))}


def yaml_experiment(rank: int, world: int, folder: str) -> dict:
    from distlearn.experiment.config import build_experiment, load_config

    experiment = build_experiment(load_config(f"{folder}/hf.yaml"))
    record = experiment.learner.train(experiment.model, experiment.data_loaders, metric=experiment.metric,
                                      disable_tqdm=True)
    last = record["training"][1]
    return {"train_loss": last["train_loss"], "test_score": last["test_result"]["test_score"],
            "samples": last["samples"], "n_test": len(experiment.data_loaders["test_loader"].dataset)}


def test_yaml_config_trains_a_transformers_model_on_a_parquet_file_with_a_tokenizer(dist_pool, tmp_path):
    import datasets

    datasets.Dataset.from_dict(text_table()).to_parquet(str(tmp_path / "train.parquet"))
    tokenizer = write_tokenizer(tmp_path)
    (tmp_path / "hf.yaml").write_text(json.dumps({  # JSON is YAML
        "data_configs": {"data_class": "distlearn.data.HFDataset", "data_parameters": {
            "data_files": str(tmp_path / "train.parquet"), "columns": ["input_ids", "attention_mask"],
            "tokenizer_class": "transformers.PreTrainedTokenizerFast",
            "tokenizer_parameters": {"tokenizer_file": tokenizer, "pad_token": "[PAD]"},
            "batch_size": 4, "test_size": 0.2, "seed": 0}},
        "model_configs": {"model_class": "distlearn.models.HFModel", "model_parameters": {
            "model_class": "transformers.BertForSequenceClassification", "config_parameters": tiny_bert_config()}},
        "learner_configs": {"learner_class": "distlearn.learner.BackwardLearner", "learner_parameters": {
            "n_epochs": 2, "optimizer_configs": {"optimizer_class": "torch.optim.AdamW",
                                                 "optimizer_parameters": {"lr": 1e-2}}}},
        "metric_configs": {"metric_class": "distlearn.metrics.Accuracy", "metric_parameters": {}},
        "run": {"seed": 0, "tracking": {"backend": "none"}},
    }))
    for world in (1, 2):
        results = dist_pool.run(yaml_experiment, world, str(tmp_path))
        assert results[0] == results[-1]
        got = results[0]
        assert got["n_test"] == 6 and got["samples"] == 24 and math.isfinite(got["train_loss"])
        assert 0 <= got["test_score"] <= 1


def column(part, name: str) -> list:
    return part.with_format(None).to_dict()[name]


def test_hf_dataset_formats_split_and_columns(tmp_path):
    import datasets

    from distlearn.data import HFDataset

    table = {"a": [float(i) for i in range(20)], "b": [i % 3 for i in range(20)], "label": [i % 2 for i in range(20)]}
    ds = datasets.Dataset.from_dict(table)
    ds.to_csv(str(tmp_path / "t.csv"), index=False)
    ds.to_json(str(tmp_path / "t.jsonl"))
    datasets.DatasetDict({"train": ds.select(range(15)), "test": ds.select(range(15, 20))}).save_to_disk(
        str(tmp_path / "saved"))
    for files in (tmp_path / "t.csv", tmp_path / "t.jsonl"):
        data = HFDataset(str(files), columns=["a"], test_size=0.25, batch_size=5, seed=3)
        batch = next(iter(data.load()["train_loader"]))
        assert set(batch) == {"a", "labels"} and batch["a"].shape == (5,) and data.n_classes == 2
        train, test = data.splits()
        assert (len(train), len(test)) == (15, 5)
        again = HFDataset(str(files), columns=["a"], test_size=0.25, seed=3).splits()[1]
        assert column(again, "a") == column(test, "a")  # the split is seeded
    saved = HFDataset(str(tmp_path / "saved"), label_column="b")
    train, test = saved.splits()
    assert column(test, "a") == [15.0, 16.0, 17.0, 18.0, 19.0] and "labels" in train.column_names
    with pytest.raises(ValueError, match="no label column 'target'"):
        HFDataset(str(tmp_path / "t.csv"), label_column="target").splits()
    assert [k for k, _ in HFDataset.check_parameters({"data_files": "nope.parquet", "format": "xml"})] == [
        "format", "data_files"]


def test_hf_dataset_val_size_holds_out_a_seeded_part_of_the_training_split(tmp_path):
    import datasets

    from distlearn.data import HFDataset

    table = {"a": [float(i) for i in range(20)], "label": [i % 2 for i in range(20)]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(table).select(range(16)),
                          "test": datasets.Dataset.from_dict(table).select(range(16, 20))}).save_to_disk(
        str(tmp_path / "saved"))
    parts = {}
    for seed in (3, 3, 4):
        loaders = HFDataset(str(tmp_path / "saved"), columns=["a"], val_size=0.25, batch_size=20, seed=seed).load()
        parts.setdefault(seed, []).append({k: sorted(next(iter(v))["a"].tolist()) for k, v in loaders.items()})
    got = parts[3][0]
    assert len(got["val_loader"]) == 4 and len(got["train_loader"]) == 12 and got["test_loader"] == [16.0, 17.0,
                                                                                                       18.0, 19.0]
    assert set(got["val_loader"]).isdisjoint(got["train_loader"])  # held out of the training rows only
    assert parts[3][1] == got and parts[4][0]["val_loader"] != got["val_loader"]  # seeded
    with pytest.raises(ValueError, match="val_size"):
        HFDataset(str(tmp_path / "saved"), val_size=16).load()
    assert [k for k, _ in HFDataset.check_parameters({"data_files": str(tmp_path / "saved"), "val_size": 1.5})] == [
        "val_size"]


def test_missing_extra_names_it():
    code = (
        "import sys; sys.modules['datasets'] = None; sys.modules['transformers'] = None\n"
        "from distlearn.data import HFDataset\n"
        "try:\n    HFDataset(sys.executable, format='csv').splits()\nexcept ImportError as e:\n    print(e)\n"
        "from distlearn.models import HFModel\n"
        "try:\n    HFModel('transformers.BertModel')\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 and all("pip install 'distlearn[hf]'" in line for line in lines), out.stdout + out.stderr


def test_causal_lm_losses_weighted_by_shifted_tokens_give_the_exact_mean():
    """A Hugging Face causal LM shifts its labels: with label_shift=1 two batches' losses, weighted by
    their target tokens, combine to the loss of both together (padding -100 left out)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from distlearn.training.batches import BatchRunner

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1, n_head=2)).eval()
    ids = torch.randint(0, VOCAB, (4, 9))
    labels = ids.clone()
    labels[0, 6:], labels[2, 3:] = -100, -100  # rows of uneven length
    batches = BatchRunner(label_shift=1)
    batches.problem({"input_ids": ids, "labels": labels}, "loader", model)
    with torch.no_grad():
        whole = batches.step(model, {"input_ids": ids, "labels": labels}).loss
        parts = [batches.step(model, {"input_ids": ids[s], "labels": labels[s]}).loss for s in (slice(0, 1),
                                                                                              slice(1, 4))]
    weights = [batches.weight(labels[s], None) for s in (slice(0, 1), slice(1, 4))]
    combined = sum(p.double() * w for p, w in zip(parts, weights)) / sum(weights)
    assert math.isclose(float(combined), float(whole), rel_tol=1e-5)
    unshifted = [BatchRunner().weight(labels[s], None) for s in (slice(0, 1), slice(1, 4))]
    wrong = sum(p.double() * w for p, w in zip(parts, unshifted)) / sum(unshifted)
    assert not math.isclose(float(wrong), float(whole), rel_tol=1e-5)  # without the shift it is not exact


# --------------------------------------------------------------------------- #
# A Hugging Face causal LM on TextDataset's dict batches (configs/charlm_hf.yaml)
# --------------------------------------------------------------------------- #

# 2000 characters: 112 training windows of 17 (14 global batches of 8) and 12 test windows
TINY_HF = ("data_configs.data_parameters.max_chars=2000", "data_configs.data_parameters.block_size=16",
           "model_configs.model_parameters.config_parameters.n_positions=17",
           "model_configs.model_parameters.config_parameters.n_embd=16",
           "model_configs.model_parameters.config_parameters.n_layer=1",
           "model_configs.model_parameters.config_parameters.n_head=2",
           "learner_configs.learner_parameters.n_epochs=2", "run.tracking.backend=none", "run.resume=none")


def run_charlm_hf(tmp_path, procs: int, *overrides: str) -> subprocess.CompletedProcess:
    """``distlearn train charlm_hf`` with the tiny overrides, on ``procs`` processes, forked warm
    (tests/warm.py; several: a hand launch with torchrun's variables)."""
    from launching import launch_env

    command = [sys.executable, "-m", "distlearn", "train", "charlm_hf", *TINY_HF, *overrides, "-q"]
    return warm.run(command, cwd=tmp_path, env=launch_env(), timeout=300, procs=procs)


def test_hf_causal_lm_on_text_trains_through_the_cli_with_the_same_per_token_loss_on_1_and_2_processes(tmp_path):
    losses = {}
    for procs in (1, 2):
        out = tmp_path / f"p{procs}"
        result = run_charlm_hf(tmp_path, procs, f"data_configs.data_parameters.batch_size={8 // procs}",
                               f"run.output_dir={out}")
        assert result.returncode == 0, result.stderr[-3000:]
        epochs = json.loads((out / "record.json").read_text())["training"]
        losses[procs] = [(e["train_loss"], e["test_result"]["test_loss"]) for e in epochs.values()]
    assert len(losses[1]) == 2 and losses[1][1][0] < losses[1][0][0]  # it learns
    for one, two in zip(losses[1], losses[2]):
        assert one == pytest.approx(two, rel=1e-5, abs=1e-7), losses


def test_a_first_batch_the_model_cannot_take_exits_2_with_one_line(tmp_path):
    result = run_charlm_hf(tmp_path, 1, "data_configs.data_parameters.batch_format=tuple",
                           f"run.output_dir={tmp_path / 'out'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("distlearn: error")]
    assert "HFModel(GPT2LMHeadModel) takes dict batches" in line and "batch_format: dict" in line


def tiny_gpt2(vocab_size: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=17, n_embd=16, n_layer=1, n_head=2,
                                      bos_token_id=0, eos_token_id=0)).eval()


def test_the_per_token_loss_of_a_dict_text_batch_is_the_hand_computed_next_character_loss():
    """The model's own loss on {"input_ids": w, "labels": w}, a learner loss with label_shift=1 on the same
    batch, and the tuple form (w[:, :-1], w[:, 1:]) with a plain cross entropy: one number, the mean of
    -log p(next character) over block_size targets per window (the weight)."""
    from distlearn.data import TextDataset
    from distlearn.training.batches import BatchRunner

    data = TextDataset(max_chars=2000, block_size=16, batch_size=8, batch_format="dict")
    batch = next(iter(data.load()["train_loader"]))
    model = tiny_gpt2(data.vocab_size)
    with torch.no_grad():
        w = batch["input_ids"]
        log_p = torch.log_softmax(model(input_ids=w).logits.double(), dim=-1)
        by_hand = -log_p[:, :-1].gather(-1, w[:, 1:, None]).mean()
        losses = []
        for runner in (BatchRunner(label_shift=1), BatchRunner(torch.nn.CrossEntropyLoss(), label_shift=1)):
            assert runner.problem(batch, "loader", model) is None
            losses.append(runner.step(model, batch).loss)
            assert int(runner.weight(batch["labels"], 8)) == 8 * 16  # block_size targets per window
        tuple_loss = torch.nn.functional.cross_entropy(model(input_ids=w[:, :-1]).logits.flatten(0, 1),
                                                       w[:, 1:].flatten())
    for loss in (*losses, tuple_loss):
        assert float(loss) == pytest.approx(float(by_hand), rel=1e-6)


def test_first_batch_refusals_name_the_fix():
    from distlearn.models import HFModel
    from distlearn.training.batches import BatchRunner

    model = HFModel("transformers.GPT2LMHeadModel", {"n_positions": 8, "n_embd": 16, "n_layer": 1, "n_head": 2},
                    vocab_size=VOCAB)
    assert model.label_shift == 1 and model.model.config.vocab_size == VOCAB
    ids = torch.randint(0, VOCAB, (2, 8))
    batch = {"input_ids": ids, "labels": ids.clone()}
    assert BatchRunner(label_shift=1).problem(batch, "loader", model) is None
    unshifted = BatchRunner().problem(batch, "loader", model)
    assert "label_shift is 0: set label_shift=1 (learner_parameters.label_shift: 1" in unshifted
    with_loss = BatchRunner(torch.nn.CrossEntropyLoss()).problem(batch, "loader", model)
    assert "gets its input_ids as labels" in with_loss  # a learner loss would teach it to copy its input
    shifted_by_data = {"input_ids": ids, "labels": torch.roll(ids, -1, 1)}
    assert BatchRunner(torch.nn.CrossEntropyLoss()).problem(shifted_by_data, "loader", model) is None
    too_long = BatchRunner(label_shift=1).problem({"input_ids": torch.zeros(2, 9, dtype=torch.long)}, "loader", model)
    assert "input_ids of 9 tokens" in too_long and "n_positions" in too_long
    assert "batch_format: dict" in BatchRunner(label_shift=1).problem((ids, ids), "loader", model)
    classifier = HFModel("transformers.BertForSequenceClassification", tiny_bert_config())
    assert classifier.label_shift == 0


def test_the_hf_config_without_transformers_names_the_extra(monkeypatch):
    from distlearn.experiment.config import ConfigError, load_config, validate_config

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ConfigError, match=r"needs transformers, which is not installed.*pip install 'distlearn\[hf\]'"):
        validate_config(load_config("charlm_hf"))
