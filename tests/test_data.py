"""distlearn.data: split sizes, train-only standardisation, seeded order, stratification, CSV."""

import math
import warnings

import numpy as np
import pytest
import sklearn.datasets
import torch
from sklearn.model_selection import train_test_split

from distlearn.data import CSVDataset, SklearnDataset


def _all(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_sklearn_loaders_sizes_dtypes_and_model_sizes():
    data = SklearnDataset("digits", batch_size=100, test_size=0.2, seed=0)
    loaders = data.load()
    assert set(loaders) == {"train_loader", "test_loader"}
    x_train, y_train = _all(loaders["train_loader"])
    x_test, y_test = _all(loaders["test_loader"])
    assert (len(x_train), len(x_test)) == (1437, 360)  # 1797 rows, 20 % test
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64 and y_train.shape == (1437,)
    assert (data.n_features, data.n_classes, data.n_outputs) == (64, 10, 10)
    assert next(iter(loaders["train_loader"]))[0].shape == (100, 64)

    wine = SklearnDataset("wine", test_size=30)
    assert (wine.n_features, wine.n_classes) == (13, 3) and len(wine.split()[1]) == 30


def test_regression_targets_are_float_column_that_mse_compares_elementwise():
    data = SklearnDataset("diabetes", batch_size=16, stratify=False)
    assert (data.task, data.n_classes, data.n_outputs) == ("regression", None, 1)
    x, y = next(iter(data.load()["train_loader"]))
    assert y.dtype == torch.float32 and y.shape == (16, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # MSELoss warns when shapes broadcast
        torch.nn.MSELoss()(torch.zeros(16, 1), y)


def test_standardisation_is_fitted_on_the_training_part_only():
    x_train, x_test, _, _ = SklearnDataset("wine", seed=3).split()
    np.testing.assert_allclose(x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(x_train.std(axis=0), 1, atol=1e-5)
    assert np.abs(x_test.mean(axis=0)).max() > 0.05  # the test part is not re-centred

    # Exactly the training part's affine map applied to the raw test rows.
    raw = sklearn.datasets.load_wine()
    raw_train, raw_test = train_test_split(raw.data, test_size=0.2, random_state=3, stratify=raw.target)
    expected = (raw_test - raw_train.mean(axis=0)) / raw_train.std(axis=0)
    np.testing.assert_allclose(x_test, expected, rtol=1e-5, atol=1e-5)

    # Constant training columns (digits' border pixels) are centred, not divided by 0.
    x_train, x_test, _, _ = SklearnDataset("digits").split()
    assert np.isfinite(x_train).all() and np.isfinite(x_test).all()


def test_same_seed_same_split_and_batch_order_without_touching_global_rng():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = (SklearnDataset("iris", batch_size=8, seed=5).load()["train_loader"] for _ in range(2))
    batches_a = [y.tolist() for _, y in a]
    assert batches_a == [y.tolist() for _, y in b]
    assert [y.tolist() for _, y in a] != batches_a  # the next epoch is shuffled anew...
    assert torch.equal(torch.random.get_rng_state(), before)  # ...by the loader's own generator

    other = SklearnDataset("iris", batch_size=8, seed=6).load()["train_loader"]
    assert [y.tolist() for _, y in other] != batches_a
    fixed = SklearnDataset("iris", batch_size=8, shuffle=False).load()["train_loader"]
    assert [y.tolist() for _, y in fixed] == [y.tolist() for _, y in fixed]


def test_classification_split_is_stratified():
    _, _, y_train, y_test = SklearnDataset("breast_cancer", test_size=0.25, seed=1).split()
    y = np.concatenate([y_train, y_test])
    for cls in np.unique(y):
        assert abs((y_test == cls).sum() - (y == cls).mean() * len(y_test)) <= 1


def test_unknown_sklearn_name_suggests_the_closest():
    with pytest.raises(ValueError, match="did you mean 'breast_cancer'"):
        SklearnDataset("breast_cancr")
    assert len(SklearnDataset("iris", test_size=0.2).load()["test_loader"].dataset) == 30


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "table.csv"
    rows = ["height,weight,kind,score"]
    for i in range(40):
        kind = ["cat", "dog"][i % 2]
        rows.append(f"{rng.normal(10, 2):.3f},{rng.normal(50, 5) + 10 * (i % 2):.3f},{kind},{i * 0.5}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_csv_classification_with_string_labels(table):
    data = CSVDataset(table, target="kind", features=["height", "weight"], test_size=0.25, batch_size=4)
    assert (data.n_features, data.n_classes) == (2, 2) and list(data.classes) == ["cat", "dog"]
    x_train, y_train = _all(data.load()["train_loader"])
    x_test, y_test = _all(data.load()["test_loader"])
    assert (len(x_train), len(x_test)) == (30, 10)
    assert y_train.dtype == torch.int64 and sorted(y_test.tolist()) == [0] * 5 + [1] * 5  # stratified
    assert abs(x_train.mean().item()) < 1e-5


def test_csv_regression_uses_all_other_columns(table):
    path = table.with_name("numeric.csv")
    path.write_text(table.read_text().replace(",cat,", ",0,").replace(",dog,", ",1,"))
    loaders = CSVDataset(path, target="score", task="regression", batch_size=64).load()
    x, y = _all(loaders["train_loader"])
    assert x.shape == (32, 3) and y.shape == (32, 1) and y.dtype == torch.float32


def test_csv_errors_name_the_file_line_and_column(table, tmp_path):
    with pytest.raises(ValueError, match=r"no column 'knd'.*did you mean 'kind'"):
        CSVDataset(table, target="knd").n_features
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,y\n1,2,x\n3,oops,y\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 3, column 'b': value 'oops' is not a number"):
        CSVDataset(bad, target="y").load()
    with pytest.raises(ValueError, match="task: expected one of"):
        CSVDataset(bad, target="y", task="clustering")
    assert [k for k, _ in CSVDataset.check_parameters({"path": tmp_path / "nope.csv"})] == ["path"]


def test_fast_path_is_what_the_tabular_sets_use():
    from distlearn.runtime.loader import TensorBatches, batched

    loader = SklearnDataset("iris", batch_size=8).load()["train_loader"]
    assert isinstance(loader.dataset, TensorBatches) and loader.collate_fn is batched
    x, y = loader.dataset.__getitems__([3, 1])
    assert torch.equal(x[1], loader.dataset[1][0]) and y.shape == (2,)


def test_text_dataset_windows_split_and_baseline(tmp_path):
    from distlearn.data import TextDataset

    data = TextDataset(block_size=16, batch_size=5, max_chars=4000)
    assert data.vocab_size == len(set(data.text)) == data.n_outputs
    x, y = next(iter(data.load()["train_loader"]))
    assert x.shape == y.shape == (5, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # labels are the next characters
    train, test = data.parts()
    assert len(train) == 3600 and len(test) == 400 and data.decode(data.encode("def")) == "def"
    assert data.decode(torch.cat([train, test])) == data.text
    assert 1.0 < data.unigram_loss() < math.log(data.vocab_size)
    assert len(TextDataset().text) > 400_000  # the embedded corpus, no download
    (tmp_path / "t.txt").write_text("abcabcabc" * 20)
    small = TextDataset(tmp_path / "t.txt", block_size=4, stride=2, batch_size=2)
    assert small.vocab_size == 3 and len(small.windows(small.parts()[0])[0]) == (162 - 5) // 2 + 1
    assert [k for k, _ in TextDataset.check_parameters({"block_size": 0, "test_size": 1.5})] == ["block_size",
                                                                                                  "test_size"]


def test_text_dataset_dict_batches_are_the_tuple_windows_whole_for_a_model_that_shifts():
    """batch_format: dict gives each window of block_size + 1 characters as input_ids and labels (a copy),
    in the same order as the tuple form's (inputs, next-character labels); any other value is refused."""
    from distlearn.data import TextDataset

    pairs, dicts = (TextDataset(block_size=8, batch_size=4, max_chars=3000, batch_format=form).load()
                    for form in ("tuple", "dict"))
    for name in ("train_loader", "test_loader"):
        for (x, y), batch in zip(pairs[name], dicts[name], strict=True):
            assert set(batch) == {"input_ids", "labels"} and batch["input_ids"].shape == (x.shape[0], 9)
            assert torch.equal(batch["input_ids"][:, :-1], x) and torch.equal(batch["labels"][:, 1:], y)
            assert torch.equal(batch["labels"], batch["input_ids"])
            assert batch["labels"].data_ptr() != batch["input_ids"].data_ptr()
    assert repr(TextDataset(batch_format="dict")).endswith("batch_format='dict')")
    problems = TextDataset.check_parameters({"batch_format": "dicts"})
    assert [k for k, _ in problems] == ["batch_format"] and "['tuple', 'dict']" in problems[0][1]
    with pytest.raises(ValueError, match="batch_format"):
        TextDataset(batch_format="pairs")


def test_numpy_dataset_npz_npy_and_own_test_part(tmp_path):
    from distlearn.data import NumpyDataset

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 1, 4, 4)), rng.integers(0, 3, 40)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    data = NumpyDataset(tmp_path / "a.npz", test_size=0.25, batch_size=8)
    bx, by = next(iter(data.load()["train_loader"]))
    assert bx.shape == (8, 1, 4, 4) and by.dtype == torch.int64 and data.n_classes == 3
    np.save(tmp_path / "x.npy", x[:, 0, 0])
    np.save(tmp_path / "y.npy", y.astype(float))
    reg = NumpyDataset(tmp_path / "x.npy", y_path=tmp_path / "y.npy", task="regression", stratify=False)
    assert reg.n_features == 4 and reg.split()[3].shape == (8, 1)
    np.savez(tmp_path / "b.npz", x=x[:30], y=y[:30], x_test=x[30:], y_test=y[30:])
    own = NumpyDataset(tmp_path / "b.npz")
    x_train, x_test, y_train, y_test = own.split()
    assert len(x_train) == 30 and len(x_test) == 10 and list(y_test) == list(y[30:])
    with pytest.raises(ValueError, match="no array 'features'"):
        NumpyDataset(tmp_path / "a.npz", x_key="features").load()
    assert [k for k, _ in NumpyDataset.check_parameters({"path": str(tmp_path / "x.npy")})] == ["y_path"]


class Squares(torch.utils.data.Dataset):
    """A data set for TorchDataset by path: (x, x**2) pairs."""

    n_features = 1

    def __init__(self, n: int = 10, offset: int = 0) -> None:
        self.n, self.offset = n, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        v = float(i + self.offset)
        return {"x": torch.tensor([v]), "labels": torch.tensor([v * v])}


def stack_collate(items):
    return {"x": torch.stack([i["x"] for i in items]), "labels": torch.stack([i["labels"] for i in items]),
            "collated": True}


def test_torch_dataset_by_path_with_collate_by_path():
    from distlearn.data import TorchDataset

    data = TorchDataset("test_data.Squares", {"n": 10}, collate_fn="test_data.stack_collate", batch_size=4,
                        test_size=0.3)
    loaders = data.load()
    assert len(loaders["train_loader"].dataset) == 7 and len(loaders["test_loader"].dataset) == 3
    batch = next(iter(loaders["train_loader"]))
    assert batch["collated"] and batch["x"].shape == (4, 1) and data.n_features == 1 and data.n_classes is None
    own = TorchDataset("test_data.Squares", {"n": 6}, test_parameters={"n": 2, "offset": 100}).load()
    assert next(iter(own["test_loader"]))["x"].tolist() == [[100.0], [101.0]]
    problems = dict(TorchDataset.check_parameters({"dataset_class": "test_data.Nope", "collate_fn": "math.pi"}))
    assert "cannot import 'test_data.Nope'" in problems["dataset_class"] and "not callable" in problems["collate_fn"]


def test_the_learner_trains_on_the_fast_path_exactly_as_on_a_plain_loader(fresh_accelerate):
    """Same seed, same numbers: every batch loss, the train and test numbers of each epoch (dropout
    draws from the global RNG, which torch's loader iterator also draws from once per pass)."""
    from torch.utils.data import DataLoader, TensorDataset

    from distlearn.runtime.loader import _TensorBatchLoader
    from distlearn.training.learner import BackwardLearner
    from distlearn.metrics import Accuracy
    from distlearn.models import MLP

    data = SklearnDataset("iris", batch_size=16, seed=2)
    fast = data.load()
    x_train, x_test, y_train, y_test = (torch.from_numpy(a) for a in data.split())
    plain = {"train_loader": DataLoader(TensorDataset(x_train, y_train), batch_size=16, shuffle=True,
                                        generator=torch.Generator().manual_seed(2)),
             "test_loader": DataLoader(TensorDataset(x_test, y_test), batch_size=16)}
    records = []
    for loaders in (plain, fast):
        fresh_accelerate()
        torch.manual_seed(0)
        learner = BackwardLearner(n_epochs=3, loss=torch.nn.CrossEntropyLoss(), seed=2,
                                  optimizer_configs={"optimizer_class": "torch.optim.SGD",
                                                     "optimizer_parameters": {"lr": 0.1}})
        record = learner.train(MLP(4, 3, hidden_sizes=[8], dropout=0.5), loaders, metric=Accuracy(), disable_tqdm=True)
        records.append([(e["train_loss"], e["train_score"], [b["loss"] for b in e["batch_records"].values()],
                         e["test_result"]["test_loss"], e["test_result"]["test_score"])
                        for e in record["training"].values()])
        fast_inside = type(learner._prepared_loaders[loaders["train_loader"]].base_dataloader) is _TensorBatchLoader
        assert fast_inside == (loaders is fast)
    assert records[0] == records[1]
