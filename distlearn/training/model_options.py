"""What the learner does to the model before training: ``torch.compile`` and activation checkpointing.

Both are asked for as one grouped option, ``BackwardLearner(model_options=ModelOptions(...))``
(configs: ``learner_parameters.compile`` and ``.gradient_checkpointing``); their ranges belong
to :mod:`.settings`.

Compiling replaces the module's ``forward`` with its compiled version, in place, before
Accelerate's ``prepare``: the module and its parameters stay the user's, so the state dict, the
checkpoints and ``model.safetensors`` keep the user's key names (no ``_orig_mod.`` prefix; an
uncompiled checkpoint loads into a compiled run and back), and DDP wraps the module as it would
the eager one. Unless ``dynamic`` is given, every input's first (batch) dimension is marked
dynamic before each call, so the first compile is already the one for any batch size: the
smaller last batch compiles nothing more, and a process resumed mid-run (whose first batch may
be another size) runs the same kernels as the uninterrupted one.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..options import did_you_mean
from .settings import MODEL_OPTION_KEYS, check_learner_options

__all__ = ["CompileOptions", "ModelOptions", "ModelOptionsError", "apply_model_options", "eager_forward"]

_EAGER = "_distlearn_eager_forward"  # the module's own forward, kept while it runs compiled
_APPLIED = "_distlearn_compiled_with"  # the CompileOptions it was compiled with


class ModelOptionsError(ValueError):
    """The model or the machine cannot do what the model options ask (an input error: exit 2 in the CLI)."""


@dataclass(frozen=True)
class CompileOptions:
    """``torch.compile``'s arguments. ``dynamic`` None: the batch dimension dynamic, the rest as torch decides."""

    mode: str | None = None
    dynamic: bool | None = None
    backend: Any = "inductor"

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``torch.compile``."""
        return {"mode": self.mode, "dynamic": self.dynamic, "backend": self.backend}


@dataclass(frozen=True)
class ModelOptions:
    """What the learner does to the model before training.

    Args:
        compile: False, True (inductor, torch's defaults) or a mapping / :class:`CompileOptions` with
            ``mode``, ``dynamic``, ``backend`` (e.g. ``{"backend": "aot_eager"}``).
        gradient_checkpointing: Recompute activations in backward instead of storing them, through
            the model's ``gradient_checkpointing_enable()`` (Hugging Face models, ``CharTransformer``).

    Raises:
        ValueError: An option out of range (:mod:`.settings`'s words).
    """

    compile: CompileOptions | bool | Mapping[str, Any] | None = False
    gradient_checkpointing: bool = False
    compiled: CompileOptions | None = field(init=False, default=None, compare=False)

    def __post_init__(self) -> None:
        value = self.compile
        if isinstance(value, CompileOptions):
            value = value.kwargs()
        check_learner_options(compile=value, gradient_checkpointing=self.gradient_checkpointing)
        if value is not False:
            compiled = CompileOptions(**({} if value is True else dict(value)))
            _check_backend(compiled.backend)
            object.__setattr__(self, "compiled", compiled)

    @classmethod
    def of(cls, value: ModelOptions | Mapping[str, Any] | None) -> ModelOptions:
        """``value`` as ModelOptions: None is the default (neither), a mapping gives the fields by name.

        Raises:
            ValueError: A mapping with another key, or an option out of range.
        """
        if value is None:
            return cls()
        if isinstance(value, ModelOptions):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"model_options must be a ModelOptions or a dict, got {type(value).__name__}")
        unknown = sorted(str(k) for k in value if k not in MODEL_OPTION_KEYS)
        if unknown:
            raise ValueError(f"model_options: unknown keys {unknown}; expected some of {list(MODEL_OPTION_KEYS)}")
        return cls(**dict(value))


def apply_model_options(model: nn.Module, options: ModelOptions, device: torch.device,
                        dynamo_backend: str = "NO") -> None:
    """Switch on activation checkpointing and compile ``model`` in place (before Accelerate's prepare).

    Calling it again with the same options changes nothing; other compile options recompile from the
    module's own forward; compile off restores it.

    Args:
        dynamo_backend: Accelerate's own (``accelerate launch --dynamo_backend``; "NO": none).

    Raises:
        ModelOptionsError: The model has no activation checkpointing, inductor on a CPU finds no
            C++ compiler, or Accelerate compiles too; the message names the config key and the fix.
    """
    if options.compiled is not None and dynamo_backend.upper() != "NO":
        raise ModelOptionsError(
            f"learner_parameters.compile is set and Accelerate compiles too (dynamo_backend={dynamo_backend!r}): "
            "compile once, with compile (keeps the key names) or with Accelerate's --dynamo_backend"
        )
    if options.gradient_checkpointing:
        _enable_checkpointing(model)
    if options.compiled is None:
        eager_forward(model)
        return
    if model.__dict__.get(_APPLIED) == options.compiled:
        return
    eager_forward(model)
    if options.compiled.backend == "inductor" and device.type == "cpu":
        _check_cpu_compiler()
    own = model.forward
    model.__dict__[_EAGER] = own
    model.forward = torch.compile(own, **options.compiled.kwargs())
    model.__dict__[_APPLIED] = options.compiled
    if options.compiled.dynamic is None:
        model.__dict__["_distlearn_batch_hook"] = model.register_forward_pre_hook(_mark_batch_dynamic, with_kwargs=True)


def eager_forward(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_model_options`'s compile: the module runs its own forward again; returns it."""
    if _EAGER in model.__dict__:
        model.__dict__.pop("forward", None)
        model.__dict__.pop(_EAGER)
        model.__dict__.pop(_APPLIED, None)
        hook = model.__dict__.pop("_distlearn_batch_hook", None)
        if hook is not None:
            hook.remove()
    return model


def _mark_batch_dynamic(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Mark dimension 0 of every input tensor dynamic, before the compiled forward sees it (a hook runs
    eagerly: marking inside the compiled code would be ignored). ``maybe_``: a batch of 1 may still
    specialise, compiled once."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            torch._dynamo.maybe_mark_dynamic(value, 0)


def _check_backend(backend: Any) -> None:
    """Refuse an unknown backend name now, not at the first step."""
    if callable(backend):
        return
    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise ValueError(f"compile.backend: {backend!r} is not a torch.compile backend{did_you_mean(backend, known)}; "
                         f"expected one of {known}")


def _enable_checkpointing(model: nn.Module) -> None:
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if enable is None:
        raise ModelOptionsError(
            f"learner_parameters.gradient_checkpointing: true, but {type(model).__name__} has no "
            "gradient_checkpointing_enable() (Hugging Face models and distlearn.models.CharTransformer have one); "
            "set gradient_checkpointing: false, or give the model that method (torch.utils.checkpoint per block)"
        )
    try:
        enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    except ValueError as error:  # transformers' own refusal for a model without support
        raise ModelOptionsError(
            f"learner_parameters.gradient_checkpointing: true, but {type(model).__name__} refuses it ({error}); "
            "set gradient_checkpointing: false"
        ) from None


def _check_cpu_compiler() -> None:
    """Inductor compiles C++ for the CPU: refuse now, with the fix, instead of deep inside the first step."""
    from torch._inductor import config

    from ..runtime.launch import cxx_compiler

    wanted = cxx_compiler() or next((c for c in _as_tuple(config.cpp.cxx) if c), "g++")
    if shutil.which(wanted) is None:
        raise ModelOptionsError(
            f"learner_parameters.compile: the inductor backend on a CPU needs a C++ compiler, and {wanted!r} "
            "(set by $CXX or torch._inductor.config.cpp.cxx) is not on PATH: install one (e.g. apt-get install g++), "
            "set CXX, or use compile: {backend: aot_eager} or compile: false"
        )


def _as_tuple(value: Any) -> tuple:
    return value if isinstance(value, tuple) else (value,)
