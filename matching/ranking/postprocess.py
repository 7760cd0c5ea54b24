"""The column-wise pass of the 5th-place solution: let the catalog side vote on each query's rank 1 and 2.

For each catalog image (column) its best query (row) is found; a query then holds the whale of the
highest-scoring catalog image that chose it, when that score is at least ``min_score``. Where that
whale is the query's rank 2 (and not its rank 1), ranks 1 and 2 are swapped, under guards:

- rank 1 a whale: swapped unless ``margin`` is set and the rank-1 whale's best image score for the
  query exceeds the rank-2 whale's by more than ``margin``;
- rank 1 ``new_whale``: not swapped when the voted whale is already rank 1 of another query, nor
  when it is rank 2 of ``crowd_rank2`` or more queries and the vote scored below ``crowd_score``.

Everything is pure arrays and lists in, new lists out; ``enabled=False`` returns the ranking unchanged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from data.catalog import NEW_WHALE
from matching.metrics import average_precision_at_5, map_at_5


@dataclass(frozen=True)
class ColumnPass:
    """Settings of the column-wise pass (defaults: the 5th place's values)."""

    enabled: bool = True
    min_score: float = 0.46
    margin: float | None = None
    crowd_rank2: int | None = 3
    crowd_score: float = 0.6
    new_whale: str = NEW_WHALE


def column_votes(
    scores: np.ndarray, gallery_labels: Sequence[str], min_score: float, new_whale: str = NEW_WHALE
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: the whale voted by the catalog images whose best query it is ("" if none) and its score."""
    scores = np.asarray(scores)
    labels = np.asarray(gallery_labels, dtype=str)
    if scores.ndim != 2 or scores.shape[1] != len(labels):
        raise ValueError(f"scores of shape {scores.shape} do not match {len(labels)} gallery labels")
    n_q = scores.shape[0]
    vote = np.full(n_q, "", dtype=labels.dtype if labels.size else "<U1")
    vote_score = np.full(n_q, -np.inf, dtype=np.float32)
    if n_q == 0 or labels.size == 0:
        return vote, vote_score
    best_row = scores.argmax(axis=0)
    best = scores[best_row, np.arange(len(labels))]
    keep = np.flatnonzero((best >= min_score) & (labels != new_whale))
    order = keep[np.argsort(best[keep], kind="stable")]  # ascending: the strongest vote is written last
    vote[best_row[order]] = labels[order]
    vote_score[best_row[order]] = best[order]
    return vote, vote_score


def _best_for(scores: np.ndarray, columns: dict[str, np.ndarray], q: int, whale: str) -> float:
    return float(scores[q, columns[whale]].max())


def apply_column_pass(
    ranked: Sequence[Sequence[str]],
    scores: np.ndarray,
    gallery_labels: Sequence[str],
    settings: ColumnPass = ColumnPass(),
) -> tuple[list[list[str]], np.ndarray]:
    """(new rankings, boolean mask of the queries whose ranks 1 and 2 were swapped)."""
    out = [list(r) for r in ranked]
    swapped = np.zeros(len(out), dtype=bool)
    if len(out) != np.asarray(scores).shape[0]:
        raise ValueError(f"{len(out)} rankings for {np.asarray(scores).shape[0]} score rows")
    if not settings.enabled or not out:
        return out, swapped
    nw = settings.new_whale
    vote, vote_score = column_votes(scores, gallery_labels, settings.min_score, nw)
    labels = np.asarray(gallery_labels, dtype=str)
    columns: dict[str, np.ndarray] = {}
    top1 = Counter(r[0] for r in out if r)
    top2 = Counter(r[1] for r in out if len(r) > 1)
    for q, r in enumerate(out):
        if len(r) < 2 or vote[q] == "" or vote[q] == r[0] or vote[q] != r[1]:
            continue
        whale = r[1]
        if r[0] == nw:
            if top1[whale] > 0:
                continue
            if (settings.crowd_rank2 is not None and top2[whale] >= settings.crowd_rank2
                    and vote_score[q] < settings.crowd_score):
                continue
        elif settings.margin is not None:
            for w in (r[0], whale):
                if w not in columns:
                    columns[w] = np.flatnonzero(labels == w)
            if _best_for(scores, columns, q, r[0]) - _best_for(scores, columns, q, whale) > settings.margin:
                continue
        r[0], r[1] = r[1], r[0]
        swapped[q] = True
    return out, swapped


@dataclass(frozen=True)
class PassEffect:
    """What the column-wise pass did to MAP@5 on queries with known truth."""

    map_before: float
    map_after: float
    swapped: int
    helped: int
    hurt: int


def column_pass_effect(
    ranked: Sequence[Sequence[str]],
    scores: np.ndarray,
    gallery_labels: Sequence[str],
    truth: Sequence[str],
    settings: ColumnPass = ColumnPass(),
) -> PassEffect:
    """MAP@5 before and after the pass, and how many swaps raised or lowered a query's precision."""
    after, swapped = apply_column_pass(ranked, scores, gallery_labels, settings)
    before_ap = np.array([average_precision_at_5(t, r) for t, r in zip(truth, ranked, strict=True)])
    after_ap = np.array([average_precision_at_5(t, r) for t, r in zip(truth, after, strict=True)])
    return PassEffect(
        map_before=map_at_5(list(truth), [list(r) for r in ranked]),
        map_after=map_at_5(list(truth), after),
        swapped=int(swapped.sum()),
        helped=int((after_ap > before_ap).sum()),
        hurt=int((after_ap < before_ap).sum()),
    )
