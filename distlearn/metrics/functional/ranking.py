"""Exact binary ranking scores from every (score, label) pair, as functions."""

from __future__ import annotations

import torch


def binary_auroc(scores: torch.Tensor, positive: torch.Tensor, n_pos: int) -> float:
    """Area under the ROC curve of 1-D ``scores`` against a boolean ``positive`` with both classes present.

    The Mann-Whitney U with average ranks for ties: the trapezoidal ROC area.
    """
    n_neg = positive.numel() - n_pos
    order = scores.argsort()
    sorted_scores = scores[order]
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)
    average_rank = ends - (counts.to(torch.float64) - 1) / 2  # 1-based
    ranks = average_rank[inverse]
    rank_sum = ranks[positive[order]].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def binary_average_precision(scores: torch.Tensor, positive: torch.Tensor, n_pos: int) -> float:
    """Average precision (scikit-learn's step rule) of 1-D ``scores`` with ``n_pos > 0`` positive samples."""
    order = scores.argsort(descending=True, stable=True)
    sorted_scores, hits = scores[order], positive[order].to(torch.float64)
    last = torch.ones_like(sorted_scores, dtype=torch.bool)  # last row of each distinct score
    last[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    tps = hits.cumsum(0)[last]
    seen = torch.arange(1, len(hits) + 1, dtype=torch.float64)[last]
    precision, recall = tps / seen, tps / n_pos
    steps = torch.diff(recall, prepend=torch.zeros(1, dtype=torch.float64))
    return float((steps * precision).sum())
