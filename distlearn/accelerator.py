"""Kept for imports written before the redesign: the Accelerator lives in ``distlearn.runtime.accelerator``."""

from .runtime.accelerator import build_accelerator, check_accelerator, check_loader, launched_world_size, prepare_loader

__all__ = ["build_accelerator", "check_accelerator", "check_loader", "launched_world_size", "prepare_loader"]
