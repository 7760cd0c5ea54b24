"""The score matrix, the one currency between members: its type, its file (``.npz``: ``scores``, ``query``,
``gallery``), alignment by image name, weighted and plain means, out-of-fold rows stacked, self pairs masked.

Matrices are aligned by image name before they are combined: rows and columns are reordered to the
first matrix's order, and different sets of names are an :class:`InputError` naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.errors import InputError
from data.io import load_npz, save_npz

KEYS = ("scores", "query", "gallery")


@dataclass(frozen=True)
class ScoreMatrix:
    """``scores[i, j]``: probability that ``query[i]`` and ``gallery[j]`` show the same whale."""

    scores: np.ndarray  # float32 [Q, G]
    query: np.ndarray  # str [Q]
    gallery: np.ndarray  # str [G]
    source: str | None = None  # the file it came from, for error messages

    def __post_init__(self) -> None:
        shape = (len(self.query), len(self.gallery))
        if self.scores.shape != shape:
            raise ValueError(f"scores have shape {self.scores.shape} but there are {shape[0]} query and "
                             f"{shape[1]} gallery names")

    @property
    def name(self) -> str:
        return self.source or "score matrix"


def save_matrix(path: str | Path, m: ScoreMatrix) -> Path:
    """Write ``m`` atomically; names as fixed-width unicode arrays, so loading never needs pickle."""
    return save_npz(path, scores=np.asarray(m.scores, dtype=np.float32),
                    query=np.asarray(m.query, dtype=str), gallery=np.asarray(m.gallery, dtype=str))


def _duplicate(names: np.ndarray) -> str | None:
    uniq, counts = np.unique(names, return_counts=True)
    return str(uniq[counts > 1][0]) if (counts > 1).any() else None


def load_matrix(path: str | Path) -> ScoreMatrix:
    """Read a matrix written by :func:`save_matrix`, checking keys, types, shapes and unique names."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        arrays = load_npz(path)
    except ValueError as err:  # object arrays (pickle) are refused by allow_pickle=False
        raise InputError(path, f"not a plain score matrix ({err})") from None
    except (OSError, EOFError) as err:
        raise InputError(path, f"not a readable .npz file ({err})") from None
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise InputError(path, f"missing array(s) {', '.join(missing)} (found: {', '.join(arrays) or 'none'})")
    scores, query, gallery = (arrays[k] for k in KEYS)
    if scores.ndim != 2 or scores.dtype.kind != "f":
        raise InputError(path, f"'scores' must be a 2-D float array, got {scores.dtype} {scores.shape}")
    for key, names in (("query", query), ("gallery", gallery)):
        if names.ndim != 1 or names.dtype.kind != "U":
            raise InputError(path, f"'{key}' must be a 1-D array of strings, got {names.dtype} {names.shape}")
        dup = _duplicate(names)
        if dup is not None:
            raise InputError(path, f"'{key}' lists image {dup!r} twice")
    if scores.shape != (len(query), len(gallery)):
        raise InputError(path, f"'scores' has shape {scores.shape} but there are {len(query)} query and "
                               f"{len(gallery)} gallery names")
    if not np.isfinite(scores).all():
        raise InputError(path, "'scores' has NaN or infinite values")
    return ScoreMatrix(scores.astype(np.float32, copy=False), query, gallery, source=str(path))


def _order(names: np.ndarray, reference: np.ndarray, what: str, m: ScoreMatrix, ref: ScoreMatrix) -> np.ndarray:
    """Indices that put ``names`` in ``reference`` order; an InputError when the sets differ."""
    if np.array_equal(names, reference):
        return np.arange(len(names))
    dup = _duplicate(names)
    if dup is not None:
        raise InputError(m.source or m.name, f"{what} names list image {dup!r} twice")
    missing = np.setdiff1d(reference, names)
    extra = np.setdiff1d(names, reference)
    if len(missing) or len(extra) or len(names) != len(reference):
        parts = []
        if len(missing):
            parts.append(f"{len(missing)} {what} image(s) of {ref.name} missing (e.g. {missing[0]!r})")
        if len(extra):
            parts.append(f"{len(extra)} {what} image(s) not in {ref.name} (e.g. {extra[0]!r})")
        raise InputError(m.source or m.name, "; ".join(parts) or f"{what} names differ from {ref.name}")
    sorter = np.argsort(names)
    return sorter[np.searchsorted(names, reference, sorter=sorter)]


def align(m: ScoreMatrix, ref: ScoreMatrix) -> ScoreMatrix:
    """``m`` with rows and columns in ``ref``'s order (no copy when already aligned)."""
    rows = _order(np.asarray(m.query), np.asarray(ref.query), "query", m, ref)
    cols = _order(np.asarray(m.gallery), np.asarray(ref.gallery), "gallery", m, ref)
    scores = m.scores
    if not np.array_equal(rows, np.arange(len(rows))):
        scores = scores[rows]
    if not np.array_equal(cols, np.arange(len(cols))):
        scores = scores[:, cols]
    return ScoreMatrix(scores, ref.query, ref.gallery, m.source)


def _as_matrix(m: ScoreMatrix | str | Path) -> ScoreMatrix:
    return m if isinstance(m, ScoreMatrix) else load_matrix(m)


def blend(matrices: Sequence[ScoreMatrix | str | Path], weights: Sequence[float]) -> ScoreMatrix:
    """Weighted mean (weights normalised to sum 1) of matrices aligned to the first one's names."""
    if not matrices:
        raise ValueError("no matrices to blend")
    if len(weights) != len(matrices):
        raise ValueError(f"{len(weights)} weights for {len(matrices)} matrices")
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    w = w / w.sum()
    first = _as_matrix(matrices[0])
    out = first.scores.astype(np.float32) * np.float32(w[0])
    for m, wi in zip(matrices[1:], w[1:], strict=True):
        out += align(_as_matrix(m), first).scores * np.float32(wi)
    return ScoreMatrix(out, first.query, first.gallery)


def average(matrices: Sequence[ScoreMatrix | str | Path]) -> ScoreMatrix:
    """Plain mean (the folds of one model), aligned to the first matrix's names."""
    return blend(matrices, [1.0] * len(matrices))


def own_columns(query: Sequence[str], gallery: Sequence[str]) -> np.ndarray:
    """``[Q]`` the gallery column of the image of each query's own name (an out-of-fold query is a catalog photo),
    -1 where there is none."""
    col = {str(name): j for j, name in enumerate(gallery)}
    return np.asarray([col.get(str(name), -1) for name in query], dtype=np.int64)


def self_pairs(query: Sequence[str], gallery: Sequence[str]) -> np.ndarray:
    """``[Q, G]`` bool: the entries where a query meets the gallery image of the same name."""
    out = np.zeros((len(query), len(gallery)), dtype=bool)
    own = own_columns(query, gallery)
    rows = np.flatnonzero(own >= 0)
    out[rows, own[rows]] = True
    return out


def mask_self(matrix: ScoreMatrix) -> ScoreMatrix:
    """Zero the entries where a query is scored against itself (same image name)."""
    matrix.scores[self_pairs(matrix.query, matrix.gallery)] = 0.0
    return matrix


def stack_rows(matrices: Sequence[ScoreMatrix], source: str) -> ScoreMatrix:
    """Out-of-fold matrices of disjoint validation sets, stacked into one (the same gallery order)."""
    gallery = matrices[0].gallery
    for m in matrices[1:]:
        if not np.array_equal(m.gallery, gallery):
            raise InputError(source, "out-of-fold matrices of one model have different catalogs")
    query = np.concatenate([m.query for m in matrices])
    if len(np.unique(query)) != len(query):
        raise InputError(source, "an image is in the validation set of two folds")
    return ScoreMatrix(scores=np.concatenate([m.scores for m in matrices]), query=query, gallery=gallery)
