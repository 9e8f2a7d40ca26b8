"""Small models that experiment configs can build by name.

The MLP is a plain ``nn.Module`` called as ``model(x)``; it holds no training
logic, so Accelerate can wrap it (DDP, FSDP) like any other module.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

# Activation names accepted in configs, mapped to their torch modules.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
}


class MLP(nn.Module):
    """A multilayer perceptron: ``[Linear -> activation -> Dropout] * len(hidden_sizes) -> Linear``.

    Args:
        in_features: Number of input features (``n_features`` of the data).
        out_features: Number of outputs: the number of classes for a classifier trained
            with ``nn.CrossEntropyLoss`` (logits), 1 for a regression with ``nn.MSELoss``.
        hidden_sizes: Width of each hidden layer; empty for a linear model.
        activation: One of ``ACTIVATIONS`` (``"relu"``, ``"gelu"``, ``"silu"``, ...).
        dropout: Dropout probability after each hidden activation, in ``[0, 1)``.

    Raises:
        ValueError: If a size is not a positive int, the activation is unknown or the
            dropout is out of range.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_sizes: Sequence[int] = (256,),
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        problems = self.check_parameters(
            {
                "in_features": in_features,
                "out_features": out_features,
                "hidden_sizes": hidden_sizes,
                "activation": activation,
                "dropout": dropout,
            }
        )
        if problems:
            raise ValueError("; ".join(f"{key}: {msg}" for key, msg in problems))
        self.in_features = in_features
        self.out_features = out_features
        self.hidden_sizes = list(hidden_sizes)

        layers: list[nn.Module] = []
        width = in_features
        for hidden in self.hidden_sizes:
            layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, out_features))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Map a ``(batch, in_features)`` float tensor to ``(batch, out_features)`` outputs."""
        return self.layers(x)

    @staticmethod
    def check_parameters(params: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Check parameter values without building anything (used by config validation).

        Args:
            params: Any subset of the constructor's keyword arguments.

        Returns:
            A list of ``(parameter name, problem)``; empty when everything is valid.
        """
        problems: list[tuple[str, str]] = []
        for key in ("in_features", "out_features"):
            value = params.get(key)
            if key in params and not _is_positive_int(value):
                problems.append((key, f"expected a positive int, got {value!r}"))
        if "hidden_sizes" in params:
            sizes = params["hidden_sizes"]
            if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
                problems.append(("hidden_sizes", f"expected a list of positive ints, got {sizes!r}"))
            elif not all(_is_positive_int(s) for s in sizes):
                problems.append(("hidden_sizes", f"expected a list of positive ints, got {list(sizes)!r}"))
        if "activation" in params:
            name = params["activation"]
            if name not in ACTIVATIONS:
                close = difflib.get_close_matches(str(name), ACTIVATIONS, n=1)
                hint = f" — did you mean {close[0]!r}?" if close else ""
                problems.append(
                    ("activation", f"expected one of {sorted(ACTIVATIONS)}, got {name!r}{hint}")
                )
        if "dropout" in params:
            p = params["dropout"]
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
                problems.append(("dropout", f"expected a float in [0, 1), got {p!r}"))
        return problems


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
