"""Score matrices of the embedding family: cosine per image or per whale centre, nearest-neighbour search for
large catalogs (faiss when installed, else torch top-k), and the logistic map from cosine to probability.

A cosine matrix has the shape and column order of a Siamese one (query x gallery images), so once mapped to
probabilities it blends, ranks and post-processes the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from data.errors import InputError

SCORINGS = ("image", "centre", "both")
FLOOR = -1.0  # cosine given to pairs a nearest-neighbour search did not return

try:  # optional: pip install faiss-cpu
    import faiss
except ImportError:  # pragma: no cover - depends on the environment
    faiss = None


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32; zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def cosine_matrix(query: np.ndarray, gallery: np.ndarray, *, budget_mb: float = 256) -> np.ndarray:
    """``[Q, G]`` float32 cosine similarity, in row blocks of about ``budget_mb``."""
    q, g = torch.from_numpy(normalize(query)), torch.from_numpy(normalize(gallery))
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query dimension {q.shape[1]} != gallery dimension {g.shape[1]}")
    out = np.empty((len(q), len(g)), dtype=np.float32)
    step = max(1, int(budget_mb * 2**20) // (4 * max(len(g), 1)))
    for start in range(0, len(q), step):
        out[start:start + step] = (q[start:start + step] @ g.T).numpy()
    return out


def whale_centres(gallery: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Unit centre of each whale (mean of its unit embeddings, renormalised) and each column's centre row."""
    whales, column = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    g = normalize(gallery)
    sums = np.zeros((len(whales), g.shape[1]), dtype=np.float64)
    np.add.at(sums, column, g)
    return normalize(sums), column


def centre_matrix(query: np.ndarray, gallery: np.ndarray, labels: Sequence[str], *,
                  budget_mb: float = 256) -> np.ndarray:
    """``[Q, G]``: each column holds the cosine of the query with the centre of that column's whale."""
    centres, column = whale_centres(gallery, labels)
    return cosine_matrix(query, centres, budget_mb=budget_mb)[:, column]


def knn_cosine(query: np.ndarray, gallery: np.ndarray, k: int) -> np.ndarray:
    """``[Q, G]`` with the cosine of each query's ``k`` nearest gallery images and :data:`FLOOR` elsewhere;
    exact inner-product search on unit vectors (faiss ``IndexFlatIP`` when installed, else torch top-k)."""
    q, g = normalize(query), normalize(gallery)
    k = max(1, min(int(k), len(g)))
    if faiss is not None:
        index = faiss.IndexFlatIP(g.shape[1])
        index.add(np.ascontiguousarray(g))
        sims, idx = index.search(np.ascontiguousarray(q), k)
    else:
        top = torch.from_numpy(q @ g.T).topk(k, dim=1)
        sims, idx = top.values.numpy(), top.indices.numpy()
    out = np.full((len(q), len(g)), FLOOR, dtype=np.float32)
    np.put_along_axis(out, idx.astype(np.int64), sims.astype(np.float32), axis=1)
    return out


def similarity(query: np.ndarray, gallery: np.ndarray, labels: Sequence[str], *, scoring: str = "image",
               knn: int | None = None, budget_mb: float = 256) -> np.ndarray:
    """Cosine ``[Q, G]`` by ``scoring``: ``image`` (query vs each photo), ``centre`` (vs the photo's whale
    centre) or ``both`` (their mean). ``knn``: keep only each query's ``knn`` best photos (others at FLOOR)."""
    if scoring not in SCORINGS:
        raise InputError(None, f"score.scoring must be one of {', '.join(SCORINGS)}, not {scoring!r}")
    if len(query) == 0 or len(gallery) == 0:
        return np.zeros((len(query), len(gallery)), dtype=np.float32)
    if scoring == "centre":
        return centre_matrix(query, gallery, labels, budget_mb=budget_mb)
    image = knn_cosine(query, gallery, knn) if knn else cosine_matrix(query, gallery, budget_mb=budget_mb)
    if scoring == "image":
        return image
    return 0.5 * (image + centre_matrix(query, gallery, labels, budget_mb=budget_mb))


def meta_embedding(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Unit embeddings of several models side by side, scaled by ``1/sqrt(n)`` (unit length again): their
    cosine is the mean of the models' cosines, and one nearest-neighbour index serves them all."""
    if not parts:
        raise ValueError("no embeddings to concatenate")
    if len({len(p) for p in parts}) != 1:
        raise ValueError("embeddings of different numbers of images")
    return np.concatenate([normalize(p) for p in parts], axis=1) / np.float32(np.sqrt(len(parts)))


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
    return (q == g) & (q != "new_whale")
