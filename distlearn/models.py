"""Small models that experiment configs can build by name.

``MLP`` (tables), ``CNN`` (small images such as the digits) and
``CharTransformer`` (a GPT-style character language model) are plain
``nn.Module``s called as ``model(x)``; they hold no training logic, so
Accelerate can wrap them (DDP, FSDP) like any other module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from .options import did_you_mean, is_int, is_number

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
                hint = did_you_mean(str(name), list(ACTIVATIONS))
                problems.append(
                    ("activation", f"expected one of {sorted(ACTIVATIONS)}, got {name!r}{hint}")
                )
        if "dropout" in params:
            p = params["dropout"]
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
                problems.append(("dropout", f"expected a float in [0, 1), got {p!r}"))
        return problems


def _is_positive_int(value: Any) -> bool:
    return is_int(value) and value >= 1


class CNN(nn.Module):
    """A small convolutional classifier for small square images (the digits: 1 x 8 x 8).

    ``[Conv3x3 -> BatchNorm -> ReLU] x 2 -> MaxPool2 -> [Conv3x3 -> BatchNorm -> ReLU] -> global
    average pool -> Dropout -> Linear``. Flat inputs ``(batch, channels * side * side)`` (what the
    tabular loaders give) are reshaped to images, so the digits' 64 features need no new data set.

    Args:
        out_features: Number of classes.
        in_channels: Image channels (1 for the digits).
        image_size: Side of the square image in pixels (8 for the digits).
        channels: Feature maps of the first two and the last convolution.
        dropout: Dropout probability before the classifier, in ``[0, 1)``.
        in_features: Ignored unless given: must equal ``in_channels * image_size**2``
            (lets configs size it from the data like the MLP).

    Raises:
        ValueError: A size is not a positive int, or ``in_features`` does not match the image.
    """

    def __init__(
        self,
        out_features: int,
        in_channels: int = 1,
        image_size: int = 8,
        channels: Sequence[int] = (32, 64),
        dropout: float = 0.1,
        in_features: int | None = None,
    ) -> None:
        super().__init__()
        problems = self.check_parameters(
            {"out_features": out_features, "in_channels": in_channels, "image_size": image_size,
             "channels": channels, "dropout": dropout, "in_features": in_features}
        )
        if problems:
            raise ValueError("; ".join(f"{key}: {msg}" for key, msg in problems))
        self.in_channels, self.image_size = in_channels, image_size
        first, last = channels

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(in_channels, first), *block(first, first), nn.MaxPool2d(2), *block(first, last),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, out_features))

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(batch, C*H*W)`` or ``(batch, C, H, W)`` floats to ``(batch, out_features)`` logits."""
        if x.dim() == 2:
            x = x.view(x.shape[0], self.in_channels, self.image_size, self.image_size)
        return self.head(self.features(x))

    @staticmethod
    def check_parameters(params: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Check parameter values without building anything (used by config validation)."""
        problems: list[tuple[str, str]] = []
        for key in ("out_features", "in_channels", "image_size"):
            if key in params and not _is_positive_int(params[key]):
                problems.append((key, f"expected a positive int, got {params[key]!r}"))
        channels = params.get("channels", (32, 64))
        if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or len(channels) != 2 \
                or not all(_is_positive_int(c) for c in channels):
            problems.append(("channels", f"expected two positive ints [first, last], got {channels!r}"))
        if "dropout" in params and not _is_probability(params["dropout"]):
            problems.append(("dropout", f"expected a float in [0, 1), got {params['dropout']!r}"))
        size_known = all(_is_positive_int(params.get(k, d)) for k, d in (("in_channels", 1), ("image_size", 8)))
        if params.get("in_features") is not None and size_known:
            expected = params.get("in_channels", 1) * params.get("image_size", 8) ** 2
            if params["in_features"] != expected:
                problems.append((
                    "in_features",
                    f"{params['in_features']!r} features are not {params.get('in_channels', 1)} channel(s) of "
                    f"{params.get('image_size', 8)}x{params.get('image_size', 8)} pixels ({expected}); "
                    "set in_channels and image_size to the images' shape",
                ))
        return problems


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t sees positions 0..t only."""

    def __init__(self, d_model: int, n_heads: int, block_size: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)  # queries, keys and values of all heads at once
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        batch, time, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        # (batch, time, width) -> (batch, heads, time, head width)
        q, k, v = (t.view(batch, time, self.n_heads, width // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).reshape(batch, time, width)  # the heads side by side again
        return self.resid_dropout(self.proj(y))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attention(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, d_model: int, n_heads: int, block_size: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attention = CausalSelfAttention(d_model, n_heads, block_size, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CharTransformer(nn.Module):
    """A small GPT-style language model over characters (in the manner of nanoGPT).

    Token and position embeddings, ``n_layers`` pre-norm transformer blocks with causal
    self-attention, a final LayerNorm and a linear head tied to the token embedding.
    ``model(idx)`` maps ``(batch, T)`` token ids (``T <= block_size``) to ``(batch, T,
    vocab_size)`` logits for the next token at every position; train it with
    ``nn.CrossEntropyLoss`` against ``(batch, T)`` next-token labels (the learner
    flattens both and weighs each batch by its number of target tokens).

    Args:
        vocab_size: Number of distinct tokens (``TextDataset.vocab_size``).
        block_size: Longest context in tokens.
        d_model: Width of the embeddings and of every block.
        n_layers: Number of transformer blocks.
        n_heads: Attention heads per block (must divide ``d_model``).
        dropout: Dropout probability in ``[0, 1)``.

    Raises:
        ValueError: A size is not a positive int, ``n_heads`` does not divide ``d_model``,
            or the dropout is out of range.
    """

    def __init__(
        self,
        vocab_size: int,
        block_size: int = 64,
        d_model: int = 128,
        n_layers: int = 2,
        n_heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        problems = self.check_parameters(
            {"vocab_size": vocab_size, "block_size": block_size, "d_model": d_model, "n_layers": n_layers,
             "n_heads": n_heads, "dropout": dropout}
        )
        if problems:
            raise ValueError("; ".join(f"{key}: {msg}" for key, msg in problems))
        self.vocab_size, self.block_size = vocab_size, block_size
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(block_size, d_model)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(TransformerBlock(d_model, n_heads, block_size, dropout) for _ in range(n_layers)))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.token_embedding.weight  # weight tying: fewer parameters, better small models
        self.apply(_init_weights)
        self.gradient_checkpointing = False  # see gradient_checkpointing_enable()
        self._checkpoint_kwargs: dict[str, Any] = {}

    def forward(self, idx: Tensor) -> Tensor:
        """Map ``(batch, T)`` token ids to ``(batch, T, vocab_size)`` next-token logits."""
        time = idx.shape[1]
        if time > self.block_size:
            raise ValueError(f"sequence of {time} tokens is longer than block_size={self.block_size}")
        positions = torch.arange(time, device=idx.device)
        x = self.dropout(self.token_embedding(idx) + self.position_embedding(positions))
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            for block in self.blocks:  # keeps each block's input only; recomputes its inside in backward
                x = torch.utils.checkpoint.checkpoint(block, x, **self._checkpoint_kwargs)
        else:
            x = self.blocks(x)
        return self.head(self.norm(x))

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Mapping[str, Any] | None = None) -> None:
        """Checkpoint every block in training (Hugging Face's switch, by the same name).

        Args:
            gradient_checkpointing_kwargs: For ``torch.utils.checkpoint.checkpoint``; default
                ``use_reentrant=False``. The RNG state is kept (``preserve_rng_state``), so the
                recomputed dropout masks are the forward's.
        """
        self._checkpoint_kwargs = {"use_reentrant": False, "preserve_rng_state": True,
                                   **dict(gradient_checkpointing_kwargs or {})}
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        """Store every activation again (the default)."""
        self.gradient_checkpointing = False

    @torch.no_grad()
    def generate(self, idx: Tensor, n_tokens: int, temperature: float = 1.0, generator: Any = None) -> Tensor:
        """Append ``n_tokens`` sampled tokens to each row of ``idx`` ``(batch, T)``."""
        for _ in range(n_tokens):
            logits = self(idx[:, -self.block_size:])[:, -1] / temperature
            nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx

    @staticmethod
    def check_parameters(params: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Check parameter values without building anything (used by config validation)."""
        problems: list[tuple[str, str]] = []
        for key in ("vocab_size", "block_size", "d_model", "n_layers", "n_heads"):
            if key in params and not _is_positive_int(params[key]):
                problems.append((key, f"expected a positive int, got {params[key]!r}"))
        d_model, n_heads = params.get("d_model", 128), params.get("n_heads", 4)
        if _is_positive_int(d_model) and _is_positive_int(n_heads) and d_model % n_heads:
            problems.append(("n_heads", f"{n_heads} heads do not divide d_model={d_model}; pick a divisor"))
        if "dropout" in params and not _is_probability(params["dropout"]):
            problems.append(("dropout", f"expected a float in [0, 1), got {params['dropout']!r}"))
        return problems


def _init_weights(module: nn.Module) -> None:
    # GPT-2's initialisation: small normal weights, zero biases.
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def _is_probability(value: Any) -> bool:
    return is_number(value) and 0 <= value < 1


class HFModel(nn.Module):
    """A Hugging Face ``transformers`` model built from its class path, for YAML configs.

    ``HFModel("transformers.BertForSequenceClassification", {"num_hidden_layers": 2, ...})``
    builds the model from its config class (``model_class.config_class(**config_parameters)``)
    with random weights, or loads it from a local folder (``pretrained``, never downloaded).
    Called with a dict batch (``model(**batch)``), it returns the model's output, with its
    ``loss`` when the batch has labels. The wrapped model is ``self.model``.

    The learner checks the first batch with it (``batch_problem``) and reads ``label_shift``:
    a causal language model (``GPT2LMHeadModel``, ``*ForCausalLM``) predicts label t+1 from
    position t and shifts the labels itself, so the learner must have ``label_shift=1``.

    Args:
        model_class: Dotted path of a ``transformers`` model class (or the class).
        config_parameters: Keyword arguments of its config class (random initialisation).
        pretrained: A local folder for ``from_pretrained`` (``local_files_only``) instead.
        vocab_size: The vocabulary of a randomly initialised model when ``config_parameters``
            gives none (configs: left out or ``auto``, the data's ``vocab_size``); a pretrained
            model keeps its own.

    Attributes:
        label_shift: 1 for a causal language model (it shifts the labels itself), else 0.

    Raises:
        ImportError: ``transformers`` is missing (``pip install 'distlearn[hf]'``).
        ValueError: The class cannot be imported or is not a ``transformers`` model.
    """

    def __init__(
        self,
        model_class: str | type,
        config_parameters: Mapping[str, Any] | None = None,
        pretrained: str | None = None,
        vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        from .data import require_hf, resolve_object

        require_hf("transformers")
        cls = resolve_object(model_class, "model_class")
        config_class = getattr(cls, "config_class", None)
        if config_class is None or not hasattr(cls, "from_pretrained"):
            raise ValueError(f"model_class: {model_class!r} is not a transformers model class (it has no config_class)")
        parameters = dict(config_parameters or {})
        if pretrained is not None:
            self.model = cls.from_pretrained(pretrained, local_files_only=True, **parameters)
        else:
            if vocab_size is not None:
                parameters.setdefault("vocab_size", vocab_size)
            self.model = cls(config_class(**parameters))
        self.label_shift = int(_is_causal_lm(cls))
        if self.label_shift and getattr(self.model, "loss_type", "") is None:
            # what transformers falls back to, with a warning per run (GPT-2's class name maps to no loss type)
            self.model.loss_type = "ForCausalLM"

    def forward(self, **batch: Any) -> Any:
        """The wrapped model's output for a dict batch."""
        return self.model(**batch)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Mapping[str, Any] | None = None) -> None:
        """The wrapped model's own activation checkpointing (``use_reentrant=False`` unless given).

        Raises:
            ValueError: The wrapped model does not support it (``supports_gradient_checkpointing``).
        """
        if not getattr(self.model, "supports_gradient_checkpointing", False):
            raise ValueError(f"{type(self.model).__name__} does not support gradient checkpointing")
        kwargs = {"use_reentrant": False, **dict(gradient_checkpointing_kwargs or {})}
        if hasattr(self.model, "activation_checkpointing_enable"):  # its name from transformers 5 on
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def batch_problem(self, batch: Any) -> str | None:
        """What this model cannot take in ``batch`` (the learner asks on the first batch), or None."""
        name = type(self.model).__name__
        if not isinstance(batch, Mapping):
            return (f"HFModel({name}) takes dict batches (model(**batch), e.g. {{'input_ids': ..., 'labels': ...}}); "
                    "make the data yield dicts: for distlearn.data.TextDataset set batch_format: dict")
        ids = batch.get("input_ids")
        limit = _max_positions(self.model.config)
        if isinstance(ids, torch.Tensor) and ids.dim() >= 2 and limit is not None and ids.shape[1] > limit:
            return (f"input_ids of {ids.shape[1]} tokens, but HFModel({name}) takes at most {limit} positions: set "
                    f"its config_parameters' n_positions (max_position_embeddings) to {ids.shape[1]} or more, or "
                    "shorten the sequences (TextDataset's dict batches are block_size + 1 tokens)")
        return None

    @staticmethod
    def check_parameters(params: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Check without importing anything (config validation): transformers is installed, sizes are ints."""
        import importlib.util

        problems: list[tuple[str, str]] = []
        if importlib.util.find_spec("transformers") is None:
            problems.append(("model_class", f"{params.get('model_class')!r} needs transformers, which is not "
                                            "installed; it comes with the hf extra: pip install 'distlearn[hf]'"))
        size = params.get("vocab_size")
        if size is not None and size != "auto" and not _is_positive_int(size):
            problems.append(("vocab_size", f"expected a positive int, auto or null, got {size!r}"))
        return problems


def _is_causal_lm(cls: type) -> bool:
    """Whether ``cls`` is one of transformers' causal language models (they shift the labels themselves)."""
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # another layout: go by the naming convention
        return cls.__name__.endswith(("ForCausalLM", "LMHeadModel"))
    names = {n for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for n in (v if isinstance(v, (tuple, list)) else [v])}
    return cls.__name__ in names


def _max_positions(config: Any) -> int | None:
    """The most positions the model's config allows (``n_positions`` / ``max_position_embeddings``);
    None when it sets none or its position embeddings are relative."""
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return None
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    return limit if is_int(limit) else None
