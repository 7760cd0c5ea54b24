"""The match-review page: what it shows for each query, and the assembly of the page from the work folder.

For every query of ``submission.csv`` the page shows its crop and its five labels; each whale label is shown by
its *representative* catalog photo, the photo of that whale with the highest score in the query's row of the
blended test matrix. Where ``truth.csv`` knows the query, every label is marked correct or wrong.

The blended test (and out-of-fold) matrix is rebuilt here from ``scores/<model>/{test,oof}.npz`` with the
weights of the ensemble config, exactly as :func:`matching.ranking.ensemble.run_ensemble` blends them (the ensemble
does not save its blend), unless a blended matrix file is given.

Plots are in :mod:`matching.review.plots`, thumbnails in :mod:`matching.review.thumbs`, the HTML and its
script in :mod:`matching.review.page`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.catalog import NEW_WHALE
from data.errors import InputError
from matching.matrix import ScoreMatrix, align, blend, load_matrix
from matching.metrics import truth_rank
from matching.ranking.ensemble import choose_weights, find_models
from matching.ranking.rank import WhaleGroups

HIST_BINS = 50


@dataclass(frozen=True)
class Candidate:
    """One of a query's labels: ``score`` is the best image score of that whale (None for ``new_whale`` or a
    whale with no photo in the matrix), ``image`` its representative catalog photo, ``correct`` None when the
    query's truth is unknown."""

    label: str
    score: float | None
    image: str | None
    correct: bool | None


@dataclass(frozen=True)
class QueryRow:
    image: str
    candidates: list[Candidate]
    best: float  # best score of any known-whale catalog photo in the query's row
    truth: str | None

    @property
    def confidence(self) -> float:
        """Score of the rank-1 answer; for ``new_whale`` at rank 1, one minus the best catalog score."""
        first = self.candidates[0]
        return 1.0 - self.best if first.label == NEW_WHALE else float(first.score or 0.0)

    @property
    def truth_rank(self) -> int | None:
        """1-based rank of the truth among the labels, 0 when absent, None when the truth is unknown."""
        return None if self.truth is None else truth_rank(self.truth, [c.label for c in self.candidates])


@dataclass
class Blend:
    test: ScoreMatrix
    oof: ScoreMatrix | None
    weights: dict[str, float]
    notes: list[str] = field(default_factory=list)


def marks(labels: Sequence[str], truth: str | None) -> list[bool | None]:
    """Per label: True where it is the truth, False where it is not, None for every label when truth is unknown."""
    return [None if truth is None else label == truth for label in labels]


def whale_columns(gallery_labels: Sequence[str]) -> dict[str, np.ndarray]:
    """Whale label -> its gallery columns (``new_whale`` photos identify no whale and are left out)."""
    return WhaleGroups.from_labels(gallery_labels).columns()


def representative(row: np.ndarray, columns: Mapping[str, np.ndarray], label: str) -> tuple[int, float] | None:
    """The column of ``label``'s best-scoring photo in a score row and that score; None when it has no photo."""
    cols = columns.get(label)
    if cols is None or len(cols) == 0:
        return None
    j = int(cols[int(np.argmax(row[cols]))])
    return j, float(row[j])


def build_rows(test: ScoreMatrix, gallery_labels: Sequence[str], submission: Mapping[str, Sequence[str]],
               truth: Mapping[str, str] | None = None, *, source: str | Path = "submission.csv",
               limit: int | None = None) -> list[QueryRow]:
    """The page's rows, in submission order (the first ``limit`` only); every query must be a row of ``test``."""
    row_of = {str(q): i for i, q in enumerate(test.query)}
    names = list(submission)
    missing = [n for n in names if n not in row_of]
    if missing:
        raise InputError(source, f"{len(missing)} image(s) are not rows of the test score matrix {test.name} "
                                 f"(first: {missing[0]!r}); was it written from other matrices?")
    if limit is not None:
        names = names[: max(0, int(limit))]
    columns = whale_columns(gallery_labels)
    known = np.concatenate(list(columns.values())) if columns else np.empty(0, dtype=np.int64)
    rows = []
    for name in names:
        scores = test.scores[row_of[name]]
        truth_label = None if truth is None else truth.get(name)
        labels = list(submission[name])
        cands = []
        for label, mark in zip(labels, marks(labels, truth_label), strict=True):
            rep = None if label == NEW_WHALE else representative(scores, columns, label)
            cands.append(Candidate(label, None if rep is None else rep[1],
                                   None if rep is None else str(test.gallery[rep[0]]), mark))
        best = float(scores[known].max()) if len(known) else 0.0
        rows.append(QueryRow(name, cands, best, truth_label))
    return rows


def load_blend(scores_dir: str | Path, weights: Mapping[str, float] | None, *, test_matrix: Path | None = None,
               oof_matrix: Path | None = None) -> Blend:
    """The blended test and out-of-fold matrices, as the ensemble blends them (or the given files)."""
    scores_dir = Path(scores_dir)
    if test_matrix is not None:
        test = load_matrix(test_matrix)
        oof = load_matrix(oof_matrix) if oof_matrix is not None else None
        return Blend(test, oof, {}, [f"blended matrices read from {test_matrix}"])
    models = find_models(scores_dir)
    if not models:
        raise InputError(scores_dir, "no score matrices (<model>/test.npz); run scripts/score_matrix.py first")
    chosen, note = choose_weights(models, weights)
    notes = [note] if note else []
    test = blend([load_matrix(scores_dir / m / "test.npz") for m in chosen], list(chosen.values()))
    oof = None
    if oof_matrix is not None:
        oof = load_matrix(oof_matrix)
    else:
        paths = [scores_dir / m / "oof.npz" for m in chosen]
        if all(p.is_file() for p in paths):
            oofs = [load_matrix(p) for p in paths]
            oof = blend([align(o, oofs[0]) for o in oofs], list(chosen.values()))
        else:
            notes.append("no out-of-fold matrices for every blended model: no out-of-fold score distribution")
    return Blend(test, oof, dict(chosen), notes)


def labels_for(names: Sequence[str], labels: Mapping[str, str], source: str | Path, what: str) -> list[str]:
    missing = [n for n in names if n not in labels]
    if missing:
        raise InputError(source, f"{len(missing)} {what} image(s) have no Id in train.csv (first: {missing[0]!r})")
    return [labels[n] for n in names]


def score_histogram(matrix: ScoreMatrix, query_labels: Sequence[str | None], gallery_labels: Sequence[str],
                    bins: int = HIST_BINS, chunk_rows: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of match and non-match pair scores over ``bins`` equal bins of [0, 1]: ``(edges, match, non)``.

    A pair matches when the query's label is the catalog photo's whale. Queries labelled None (truth unknown)
    are left out, as are catalog photos of ``new_whale`` and a photo paired with itself (masked out-of-fold
    entries). A ``new_whale`` query has only non-matches. Scores outside [0, 1] are clipped to the end bins.
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    match = np.zeros(bins, dtype=np.int64)
    non = np.zeros(bins, dtype=np.int64)
    gl = np.asarray(gallery_labels, dtype=str)
    keep_cols = gl != NEW_WHALE
    gallery = np.asarray(matrix.gallery, dtype=str)
    qrows = [i for i, lab in enumerate(query_labels) if lab is not None]
    for start in range(0, len(qrows), chunk_rows):
        idx = np.asarray(qrows[start:start + chunk_rows])
        block = np.clip(matrix.scores[idx], 0.0, 1.0)
        ql = np.asarray([query_labels[i] for i in idx], dtype=str)
        is_match = (ql[:, None] == gl[None, :]) & (ql[:, None] != NEW_WHALE)
        valid = keep_cols[None, :] & (np.asarray(matrix.query, dtype=str)[idx][:, None] != gallery[None, :])
        match += np.histogram(block[valid & is_match], bins=edges)[0]
        non += np.histogram(block[valid & ~is_match], bins=edges)[0]
    return edges, match, non


def page_data(rows: Sequence[QueryRow], thumbs: Mapping[tuple[str, str], int],
              lines: Mapping[tuple[str, str], list[float]] | None = None) -> list[dict]:
    """The rows as the page's JSON: ``n`` name, ``t`` thumbnail index, ``y`` truth, ``b`` best score, ``f``
    confidence, ``r`` truth rank, ``c`` candidates ``[label, score, catalog photo, thumbnail index, mark, lines]``
    (thumbnail -1 where there is none; mark 1 correct, 0 wrong, null unknown; lines: the local matcher's matches
    ``[qx, qy, gx, gy, ...]`` as fractions of the two crops, null where none were computed)."""
    lines = lines or {}
    out = []
    for row in rows:
        cands = []
        for c in row.candidates:
            thumb = thumbs.get(("train", c.image), -1) if c.image else -1
            cands.append([c.label, None if c.score is None else round(c.score, 4), c.image, thumb,
                          None if c.correct is None else int(c.correct), lines.get((row.image, c.image))])
        out.append({"n": row.image, "t": thumbs.get(("test", row.image), -1), "y": row.truth,
                    "b": round(row.best, 4), "f": round(row.confidence, 4), "r": row.truth_rank, "c": cands})
    return out
