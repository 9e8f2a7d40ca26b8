"""Kept for imports written before the redesign: checkpoints live in ``distlearn.training.checkpoint``."""

from .training.checkpoint import (
    MARKER,
    RESUME_BATCH,
    STOP_SIGNALS,
    CheckpointError,
    Checkpoints,
    Interrupted,
    committed_marker as check,  # its name before the redesign
    elastic_warning,
    find,
    latest,
    load_progress,
)
from .training.progress import derived_seed, reshard

__all__ = [
    "CheckpointError", "Checkpoints", "Interrupted", "MARKER", "RESUME_BATCH", "STOP_SIGNALS", "check", "derived_seed",
    "elastic_warning", "find", "latest", "load_progress", "reshard",
]
