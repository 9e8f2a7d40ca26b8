"""distlearn.data: split sizes, train-only standardisation, seeded order, stratification, CSV."""

import warnings

import numpy as np
import pytest
import sklearn.datasets
import torch
from sklearn.model_selection import train_test_split

from distlearn.data import CSVDataset, SklearnDataset, load_csv, load_sklearn


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
    assert len(load_sklearn("iris", test_size=0.2)["test_loader"].dataset) == 30


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
    loaders = load_csv(path, target="score", task="regression", batch_size=64)
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
