"""Blend weights chosen on out-of-fold matrices: every weighting on a grid of the simplex, the one with the best
out-of-fold MAP@5 (its threshold tuned as the ensemble tunes it). Models whose scores come from different
families (a pair head, a calibrated cosine) need not be equally good, so equal weights can blend below the
better one alone."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from matching.matrix import ScoreMatrix, blend
from matching.ranking.rank import tune_threshold

MAX_MODELS = 4  # 286 weightings at step 0.1; more models keep their configured weights


def simplex_grid(n: int, step: float = 0.1) -> list[tuple[float, ...]]:
    """Every ``n``-tuple of non-negative multiples of ``step`` that sums to 1."""
    units = int(round(1 / step))
    return [tuple(c / units for c in combo) + (1 - sum(combo) / units,)
            for combo in itertools.product(range(units + 1), repeat=n - 1) if sum(combo) <= units]


def tune_weights(oofs: Sequence[ScoreMatrix], gallery_labels: Sequence[str], truth: Sequence[str], *,
                 mode: str = "sum", step: float = 0.1) -> tuple[list[float], float]:
    """The grid weighting of the aligned out-of-fold matrices ``oofs`` with the best MAP@5 (the first on ties,
    in grid order), and that MAP@5."""
    best_w, best_map = [1.0 / len(oofs)] * len(oofs), -1.0
    for w in simplex_grid(len(oofs), step):
        used = [(m, wi) for m, wi in zip(oofs, w) if wi > 0]
        scores = blend([m for m, _ in used], [wi for _, wi in used]).scores
        _, value = tune_threshold(scores, gallery_labels, truth, mode=mode)
        if value > best_map + 1e-12:
            best_w, best_map = [float(x) for x in np.round(w, 6)], value
    return best_w, best_map
