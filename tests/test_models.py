"""distlearn.models: the MLP's shapes, layers and parameter checks."""

import pytest
import torch
from torch import nn

from distlearn.models import ACTIVATIONS, MLP


@pytest.mark.parametrize("hidden", [[], [8], [16, 8]])
def test_mlp_maps_batch_of_features_to_outputs(hidden):
    model = MLP(in_features=5, out_features=3, hidden_sizes=hidden)
    out = model(torch.randn(7, 5))
    assert out.shape == (7, 3)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == list(zip([5, *hidden], [*hidden, 3]))


def test_mlp_activation_and_dropout_layers():
    model = MLP(4, 2, hidden_sizes=[6, 6], activation="gelu", dropout=0.25)
    assert sum(isinstance(m, nn.GELU) for m in model.modules()) == 2
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.25, 0.25]
    assert not any(isinstance(m, nn.Dropout) for m in MLP(4, 2, [6]).modules())  # dropout 0: no layer
    model.eval()  # dropout off: deterministic
    x = torch.randn(3, 4)
    assert torch.equal(model(x), model(x))


def test_mlp_regression_output_matches_target_shape():
    out = MLP(10, 1, [8])(torch.randn(4, 10))
    assert out.shape == (4, 1)  # the data module's regression targets are (batch, 1)


def test_mlp_rejects_bad_parameters_with_names():
    with pytest.raises(ValueError, match="activation.*did you mean 'relu'"):
        MLP(4, 2, activation="rleu")
    with pytest.raises(ValueError, match="hidden_sizes"):
        MLP(4, 2, hidden_sizes=[8, 0])
    with pytest.raises(ValueError, match="dropout"):
        MLP(4, 2, dropout=1.0)
    with pytest.raises(ValueError, match="in_features"):
        MLP(0, 2)


def test_check_parameters_reports_every_problem_without_building():
    problems = MLP.check_parameters({"out_features": True, "hidden_sizes": "64", "activation": "swish"})
    assert [key for key, _ in problems] == ["out_features", "hidden_sizes", "activation"]
    assert all(MLP.check_parameters({"activation": name}) == [] for name in ACTIVATIONS)


# --------------------------------------------------------------------------- #
# CNN and CharTransformer
# --------------------------------------------------------------------------- #

from distlearn.models import CNN, CharTransformer  # noqa: E402


def test_cnn_reads_flat_pixels_as_images():
    model = CNN(out_features=10, in_features=64).eval()
    flat = torch.randn(5, 64)
    assert model(flat).shape == (5, 10)
    assert torch.equal(model(flat), model(flat.view(5, 1, 8, 8)))
    assert CNN(3, in_channels=3, image_size=6)(torch.randn(2, 3, 6, 6)).shape == (2, 3)
    with pytest.raises(ValueError, match="in_features: 63 features are not 1 channel"):
        CNN(10, in_features=63)
    assert [k for k, _ in CNN.check_parameters({"channels": [8], "dropout": 2})] == ["channels", "dropout"]


def test_char_transformer_is_causal_and_shapes():
    torch.manual_seed(0)
    model = CharTransformer(vocab_size=13, block_size=8, d_model=16, n_layers=2, n_heads=4).eval()
    idx = torch.randint(0, 13, (3, 8))
    logits = model(idx)
    assert logits.shape == (3, 8, 13)
    changed = idx.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 13
    after = model(changed)
    assert torch.allclose(after[:, :5], logits[:, :5], atol=1e-6)  # position t sees 0..t only
    assert not torch.allclose(after[:, 5:], logits[:, 5:])
    assert model.head.weight is model.token_embedding.weight  # tied
    assert model.generate(idx[:, :2], 4, generator=torch.Generator().manual_seed(0)).shape == (3, 6)
    with pytest.raises(ValueError, match="longer than block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="n_heads: 3 heads do not divide d_model=16"):
        CharTransformer(13, d_model=16, n_heads=3)
