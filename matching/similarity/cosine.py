"""Score matrices of the embedding family: cosine per image or per whale centre, nearest-neighbour search for
large catalogs (faiss when installed, else torch top-k); the logistic map from cosine to probability is in
:mod:`matching.similarity.calibration`.

A cosine matrix has the shape and column order of a Siamese one (query x gallery images), so once mapped to
probabilities it blends, ranks and post-processes the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def whale_sums(gallery: np.ndarray, labels: Sequence[str], unit: bool = True):
    """``(sums, counts, column)``: per whale the sum of its photos' features (unit length first with ``unit``) and
    its photo count, and each column's whale row."""
    whales, column = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    g = normalize(gallery) if unit else np.asarray(gallery, dtype=np.float32)
    sums = np.zeros((len(whales), g.shape[1]), dtype=np.float64)
    np.add.at(sums, column, g)
    return sums, np.bincount(column, minlength=len(whales)), column


def whale_centres(gallery: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Unit centre of each whale (mean of its unit embeddings, renormalised) and each column's centre row."""
    sums, _, column = whale_sums(gallery, labels)
    return normalize(sums), column


def without_own(feats: np.ndarray, sums: np.ndarray, column: np.ndarray, own: np.ndarray):
    """``(rows, whale, rest)`` for the queries with an own gallery column (:func:`matching.matrix.own_columns`):
    their rows, their whale and that whale's feature sum without the query's photo (``feats``, as summed)."""
    rows = np.flatnonzero(np.asarray(own) >= 0)
    whale = column[own[rows]]
    return rows, whale, sums[whale] - feats[own[rows]]


def fill_whale_columns(out: np.ndarray, rows: np.ndarray, whale: np.ndarray, column: np.ndarray,
                       values: np.ndarray) -> np.ndarray:
    """``out[rows[k], every column of whale[k]] = values[k]``."""
    for i, w, v in zip(rows, whale, values):
        out[i, column == w] = v
    return out


def centre_matrix(query: np.ndarray, gallery: np.ndarray, labels: Sequence[str], *, own: np.ndarray | None = None,
                  budget_mb: float = 256) -> np.ndarray:
    """``[Q, G]``: each column holds the cosine of the query with the centre of that column's whale. ``own``
    (:func:`matching.matrix.own_columns`): a query found in the gallery is left out of its own whale's centre,
    which would otherwise hold the query itself (an out-of-fold row scored against the whole catalog); a whale
    with no other photo then scores 0 there (its only column is the query's own, masked anyway)."""
    sums, _, column = whale_sums(gallery, labels)
    out = cosine_matrix(query, normalize(sums), budget_mb=budget_mb)[:, column]
    if own is None:
        return out
    rows, whale, rest = without_own(normalize(gallery), sums, column, own)
    return fill_whale_columns(out, rows, whale, column, (normalize(query)[rows] * normalize(rest)).sum(1))


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
               knn: int | None = None, own: np.ndarray | None = None, budget_mb: float = 256) -> np.ndarray:
    """Cosine ``[Q, G]`` by ``scoring``: ``image`` (query vs each photo), ``centre`` (vs the photo's whale
    centre) or ``both`` (their mean). ``knn``: keep only each query's ``knn`` best photos (others at FLOOR).
    ``own``: the queries' own gallery columns, left out of the centres (:func:`centre_matrix`)."""
    if scoring not in SCORINGS:
        raise InputError(None, f"score.scoring must be one of {', '.join(SCORINGS)}, not {scoring!r}")
    if len(query) == 0 or len(gallery) == 0:
        return np.zeros((len(query), len(gallery)), dtype=np.float32)
    if scoring == "centre":
        return centre_matrix(query, gallery, labels, own=own, budget_mb=budget_mb)
    image = knn_cosine(query, gallery, knn) if knn else cosine_matrix(query, gallery, budget_mb=budget_mb)
    if scoring == "image":
        return image
    return 0.5 * (image + centre_matrix(query, gallery, labels, own=own, budget_mb=budget_mb))


def meta_embedding(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Unit embeddings of several models side by side, scaled by ``1/sqrt(n)`` (unit length again): their
    cosine is the mean of the models' cosines, and one nearest-neighbour index serves them all."""
    if not parts:
        raise ValueError("no embeddings to concatenate")
    if len({len(p) for p in parts}) != 1:
        raise ValueError("embeddings of different numbers of images")
    return np.concatenate([normalize(p) for p in parts], axis=1) / np.float32(np.sqrt(len(parts)))
