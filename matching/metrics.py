"""MAP@5 as scored by the Kaggle Humpback Whale Identification competition."""

from __future__ import annotations

from collections.abc import Sequence

TOP_K = 5


def truth_rank(truth: str, predicted: Sequence[str]) -> int:
    """1-based rank of the first occurrence of ``truth`` among the first five labels, 0 when it is not there."""
    for rank, label in enumerate(list(predicted)[:TOP_K], start=1):
        if label == truth:
            return rank
    return 0


def average_precision_at_5(truth: str, predicted: Sequence[str]) -> float:
    """1/rank of the first correct label among the first five, 0 when absent (one truth label)."""
    rank = truth_rank(truth, predicted)
    return 1.0 / rank if rank else 0.0


def map_at_5(truth: Sequence[str], predicted: Sequence[Sequence[str]]) -> float:
    """Mean of :func:`average_precision_at_5` over queries; ``predicted[i]`` are query i's labels in order."""
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} truth labels but {len(predicted)} predictions")
    if not truth:
        raise ValueError("no queries to score")
    return sum(average_precision_at_5(t, p) for t, p in zip(truth, predicted)) / len(truth)
