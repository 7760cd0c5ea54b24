"""Calibration: a class-balanced logistic map from a member's raw scores (cosines, inlier counts) to probabilities,
fitted on its out-of-fold matrix against the same-whale truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from data.catalog import NEW_WHALE
from data.errors import InputError


@dataclass(frozen=True)
class Logistic:
    """``p = sigmoid(a * x + b)``, increasing in ``x`` (``a > 0``)."""

    a: float
    b: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        z = np.asarray(x, dtype=np.float64) * self.a + self.b
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def fit_logistic(scores: np.ndarray, positive: np.ndarray, *, max_negatives: int = 500_000, seed: int = 0,
                 iterations: int = 50) -> Logistic:
    """Class-balanced logistic regression of ``positive`` on ``scores`` (Newton's method, 2 parameters).

    Balanced as the Siamese head is trained (as many same as different pairs), so that both families give
    comparable probabilities; negatives are subsampled to ``max_negatives``. The slope is kept positive."""
    x = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(positive, dtype=bool).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{x.size} scores but {y.size} labels")
    pos, neg = x[y], x[~y]
    if len(pos) == 0 or len(neg) == 0:
        raise InputError(None, "the out-of-fold matrix needs both matching and non-matching pairs to calibrate")
    if len(neg) > max_negatives:
        neg = np.random.default_rng(seed).choice(neg, max_negatives, replace=False)
    xs = np.concatenate([pos, neg])
    ys = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    w = np.concatenate([np.full(len(pos), 0.5 / len(pos)), np.full(len(neg), 0.5 / len(neg))])
    X = np.stack([xs, np.ones_like(xs)], axis=1)
    theta = np.zeros(2)
    ridge = 1e-6 * np.eye(2)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(X @ theta)))
        grad = X.T @ (w * (p - ys))
        hess = (X * (w * p * (1 - p))[:, None]).T @ X + ridge
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    a, b = float(theta[0]), float(theta[1])
    if not np.isfinite([a, b]).all():
        raise InputError(None, "the logistic calibration did not converge (matching and non-matching pairs "
                               "may be perfectly separated or constant)")
    if a <= 0:  # a model worse than chance: keep the map monotone and nearly flat
        a, b = 1e-3, 0.0
    return Logistic(a, b)


def same_whale(query_labels: Sequence[str], gallery_labels: Sequence[str]) -> np.ndarray:
    """``[Q, G]`` bool: the pair shows one known whale (``new_whale`` matches nothing)."""
    q = np.asarray(query_labels, dtype=str)[:, None]
    g = np.asarray(gallery_labels, dtype=str)[None, :]
    return (q == g) & (q != NEW_WHALE)


@dataclass(frozen=True)
class Isotonic:
    """A monotone (non-decreasing) map from raw scores to probabilities, linear between its knots."""

    x: np.ndarray
    y: np.ndarray

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(scores, dtype=np.float64), self.x, self.y).astype(np.float32)


def fit_isotonic(scores: np.ndarray, positive: np.ndarray, *, bins: int = 512) -> Isotonic:
    """Class-balanced isotonic regression of ``positive`` on ``scores`` (WildFusion's calibration): the pairs
    sorted by score in up to ``bins`` quantile groups, the groups' balanced positive rates made monotone by
    scipy's pool-adjacent-violators (``scipy.optimize.isotonic_regression``)."""
    from scipy.optimize import isotonic_regression

    x = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(positive, dtype=bool).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{x.size} scores but {y.size} labels")
    if y.all() or not y.any():
        raise InputError(None, "the out-of-fold matrix needs both matching and non-matching pairs to calibrate")
    w = np.where(y, 0.5 / y.sum(), 0.5 / (~y).sum())
    order = np.argsort(x, kind="stable")
    x, y, w = x[order], y[order], w[order]
    groups = np.minimum((np.arange(len(x)) * bins) // len(x), bins - 1)
    # pairs of one raw score stay in one group (a map is a function of the score)
    groups = np.maximum.accumulate(np.where(np.r_[True, np.diff(x) > 0], groups, 0))
    _, start = np.unique(groups, return_index=True)
    weight = np.add.reduceat(w, start)
    rate = np.add.reduceat(w * y, start) / weight
    centre = np.add.reduceat(w * x, start) / weight
    fitted = isotonic_regression(rate, weights=weight, increasing=True).x
    return Isotonic(centre, fitted)
