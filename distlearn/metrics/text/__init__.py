"""Language-model metrics."""

from .perplexity import Perplexity

__all__ = ["Perplexity"]
