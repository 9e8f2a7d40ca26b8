"""The ranges of ``BackwardLearner``'s options: one owner for the learner and the config validator.

The learner raises on the first option out of range (:func:`check_learner_options`, in its
words: ``n_epochs must be an int >= 1``); the config validator lists every one under its key
path (:data:`CONFIG_CHECKS`, in a config's words: ``expected an int >= 1``). Both read the
ranges below. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..options import MIXED_PRECISION, SCHEDULER_INTERVALS, is_int, is_number

__all__ = [
    "COMPILE_KEYS", "COMPILE_MODES", "CONFIG_CHECKS", "MODEL_OPTION_KEYS", "OPTION_RANGES", "OptionRange", "RUN_CHECKS",
    "check_learner_options", "compile_problem", "group_model_options",
]

# torch.compile's modes; ``dynamic`` null lets distlearn mark the batch dimension dynamic (see model_options.py)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_KEYS = ("mode", "dynamic", "backend")
# The learner's options about the model itself, grouped as BackwardLearner(model_options=...)
MODEL_OPTION_KEYS = ("compile", "gradient_checkpointing")


@dataclass(frozen=True)
class OptionRange:
    """One option's range.

    Attributes:
        valid: Whether a value that is set (not None) is in range.
        optional: Whether None is accepted (the learner then leaves it to Accelerate, or does not clip).
        said: The learner's words: ``"{name} must be {said}, got ..."``.
        expected: A config's words: ``"{key}: expected {expected}, got ..."``.
    """

    valid: Callable[[Any], bool]
    optional: bool
    said: str
    expected: str


def _int_at_least(minimum: int) -> Callable[[Any], bool]:
    return lambda v: is_int(v) and v >= minimum


def compile_problem(value: Any) -> str | None:
    """What is wrong with a ``compile`` value (false, true or ``{mode, dynamic, backend}``), or None."""
    if isinstance(value, bool):
        return None
    if not isinstance(value, Mapping):
        return f"expected false, true or a mapping with keys {list(COMPILE_KEYS)}, got {value!r}"
    unknown = sorted(str(k) for k in value if k not in COMPILE_KEYS)
    if unknown:
        return f"unknown keys {unknown}; expected some of {list(COMPILE_KEYS)}"
    checks = {
        "mode": (lambda v: v is None or v in COMPILE_MODES, f"null or one of {list(COMPILE_MODES)}"),
        "dynamic": (lambda v: v is None or isinstance(v, bool), "null, true or false"),
        "backend": (lambda v: isinstance(v, str) and bool(v) or callable(v), "a torch.compile backend name"),
    }
    for key, (valid, expected) in checks.items():
        if key in value and not valid(value[key]):
            return f"{key}: expected {expected}, got {value[key]!r}"
    return None


def group_model_options(params: Mapping[str, Any]) -> dict[str, Any]:
    """A learner's parameters with the flat ``compile`` / ``gradient_checkpointing`` keys of a config
    grouped as ``model_options`` (BackwardLearner's one keyword for them)."""
    grouped = {k: params[k] for k in MODEL_OPTION_KEYS if k in params}
    rest = {k: v for k, v in params.items() if k not in MODEL_OPTION_KEYS}
    if grouped:
        rest["model_options"] = {**dict(rest.get("model_options") or {}), **grouped}
    return rest


OPTION_RANGES: dict[str, OptionRange] = {
    "n_epochs": OptionRange(_int_at_least(1), False, "an int >= 1", "an int >= 1"),
    "display_every_n_steps": OptionRange(_int_at_least(0), False, "an int >= 0", "an int >= 0"),
    "seed": OptionRange(_int_at_least(0), False, "an int >= 0", "an int >= 0"),
    "gradient_accumulation_steps": OptionRange(_int_at_least(1), True, "an int >= 1", "null or an int >= 1"),
    "max_grad_norm": OptionRange(
        lambda v: is_number(v) and v > 0, True, "a number > 0 or None", "null or a number > 0"
    ),
    "mixed_precision": OptionRange(
        lambda v: v in MIXED_PRECISION, True, f"one of {MIXED_PRECISION}", f"one of {list(MIXED_PRECISION)}"
    ),
    # train(monitor=Monitor(peak_tflops=...)) and run.peak_tflops: one device's dense peak TFLOP/s
    "peak_tflops": OptionRange(
        lambda v: is_number(v) and 0 < v < float("inf"), True, "None or a finite number > 0 (one device's TFLOP/s)",
        "null (the known peak of the device, if any) or a finite number > 0 (one device's TFLOP/s)",
    ),
    "scheduler_interval": OptionRange(
        lambda v: v in SCHEDULER_INTERVALS, False,
        f"one of {SCHEDULER_INTERVALS}", f"one of {list(SCHEDULER_INTERVALS)}",
    ),
    "compile": OptionRange(
        lambda v: compile_problem(v) is None, False,
        f"False, True or a dict with keys {list(COMPILE_KEYS)}",
        f"false, true or {{mode: null or one of {list(COMPILE_MODES)}, dynamic: null/true/false, "
        "backend: a torch.compile backend name}",
    ),
    "gradient_checkpointing": OptionRange(lambda v: isinstance(v, bool), False, "True or False", "true or false"),
}


def _config_check(name: str, null_ok: bool = False) -> tuple[Callable[[Any], bool], str]:
    rule = OPTION_RANGES[name]
    expected = f"null or {rule.expected}" if null_ok else rule.expected
    return (lambda v: (v is None and (rule.optional or null_ok)) or (v is not None and rule.valid(v))), expected


# The options a config's learner_parameters are checked for, in the order their problems are listed.
# A null seed is in range for a config: the experiment builder gives the learner run.seed instead
# (BackwardLearner's seed is annotated int, so its null is still refused, as a type).
CONFIG_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n_epochs": _config_check("n_epochs"),
    "gradient_accumulation_steps": _config_check("gradient_accumulation_steps"),
    "max_grad_norm": _config_check("max_grad_norm"),
    "mixed_precision": _config_check("mixed_precision"),
    "scheduler_interval": _config_check("scheduler_interval"),
    "seed": _config_check("seed", null_ok=True),
    "compile": _config_check("compile"),
    "gradient_checkpointing": _config_check("gradient_checkpointing"),
}


# The run section's keys that are learner options too (``run.peak_tflops`` reaches ``train(monitor=...)``).
RUN_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {"peak_tflops": _config_check("peak_tflops")}


def check_learner_options(**options: Any) -> None:
    """Check the learner's options in the order given; the first out of range raises.

    Args:
        **options: Option names of :data:`OPTION_RANGES` and their values.

    Raises:
        ValueError: ``"{name} must be {range}, got {value!r}"``.
    """
    for name, value in options.items():
        rule = OPTION_RANGES[name]
        if not (value is None and rule.optional) and (value is None or not rule.valid(value)):
            detail = compile_problem(value) if name == "compile" else None
            raise ValueError(f"{name} must be {rule.said}, got {value!r}" + (f" ({detail})" if detail else ""))
