"""Turn a query x gallery score matrix into five labels per query, with ``new_whale`` placed by a threshold.

Gallery columns are reduced per whale (torch ``scatter_reduce``/``index_add`` over a column -> whale
index), in row chunks so that memory stays bounded on an 8k x 16k matrix.

Ranking rule for one query and threshold ``t``:
  1. whales with at least one image scoring above ``t``, ordered by their aggregate: the sum of their
     image scores above ``t`` (mode ``"sum"``) or their best image score (mode ``"max"``);
  2. ``new_whale``;
  3. the remaining whales, ordered by their best image score;
  truncated to five labels. ``threshold=None`` means no image counts as above and no ``new_whale``
  is inserted: whales ordered by best score only. Gallery images labelled ``new_whale`` identify no
  whale and are ignored. Ties are broken by label (alphabetical), so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from data.catalog import NEW_WHALE

MODES = ("sum", "max")
TOP_K = 5
_CHUNK_ELEMENTS = 1 << 23  # 8M float32 (32 MB) of scores reduced at a time


@dataclass(frozen=True)
class WhaleGroups:
    """Gallery columns grouped by whale: ``column_whale[j]`` is column j's index into ``labels``.

    Columns labelled ``new_whale`` get index ``len(labels)``, a spare bucket that is dropped.
    """

    labels: np.ndarray  # [W] sorted distinct whale labels (new_whale excluded)
    column_whale: np.ndarray  # [G] int64

    @classmethod
    def from_labels(cls, gallery_labels: Sequence[str], new_whale: str = NEW_WHALE) -> WhaleGroups:
        labels = np.asarray(gallery_labels, dtype=str)
        whales, inverse = np.unique(labels, return_inverse=True)
        is_new = whales == new_whale
        remap = np.cumsum(~is_new) - 1
        remap[is_new] = len(whales) - int(is_new.sum())
        return cls(whales[~is_new], remap[inverse].astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def columns(self) -> dict[str, np.ndarray]:
        """Whale label -> its gallery columns, in column order (``new_whale`` columns belong to none)."""
        order = np.argsort(self.column_whale, kind="stable")
        starts = np.searchsorted(self.column_whale[order], np.arange(len(self.labels) + 1))
        return {str(w): order[starts[i]:starts[i + 1]] for i, w in enumerate(self.labels)}


def _check(scores: np.ndarray, gallery_labels: Sequence[str], mode: str) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [queries, gallery], got shape {scores.shape}")
    if scores.shape[1] != len(gallery_labels):
        raise ValueError(f"scores have {scores.shape[1]} columns but there are {len(gallery_labels)} labels")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return scores


def _row_chunks(n_rows: int, n_cols: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(n_cols, 1))
    return [slice(i, min(i + step, n_rows)) for i in range(0, n_rows, step)]


def _reduce_by_whale(scores: np.ndarray, groups: WhaleGroups, threshold: float | None) -> np.ndarray:
    """[Q, W]: each whale's best image score (``threshold`` None) or sum of its image scores above it."""
    n_rows, n_cols = scores.shape
    out = np.empty((n_rows, len(groups)), dtype=np.float32)
    index = torch.from_numpy(groups.column_whale)
    for rows in _row_chunks(n_rows, n_cols):
        block = torch.from_numpy(np.ascontiguousarray(scores[rows], dtype=np.float32))
        n = block.shape[0]
        if threshold is None:
            acc = torch.full((n, len(groups) + 1), -torch.inf)
            acc.scatter_reduce_(1, index.expand(n, n_cols), block, "amax")
        else:
            acc = torch.zeros((n, len(groups) + 1))
            acc.index_add_(1, index, torch.where(block > threshold, block, 0.0))
        out[rows] = acc[:, : len(groups)].numpy()
    if threshold is None and np.isnan(out).any():  # amax propagates NaN
        raise ValueError("scores contain NaN")
    return out


def whale_best(scores: np.ndarray, groups: WhaleGroups) -> np.ndarray:
    """[Q, W] best image score of each whale for each query (float32)."""
    return _reduce_by_whale(scores, groups, None)


def whale_sum_above(scores: np.ndarray, groups: WhaleGroups, threshold: float) -> np.ndarray:
    """[Q, W] sum of each whale's image scores that are above ``threshold`` (float32)."""
    return _reduce_by_whale(scores, groups, float(threshold))


def _top_k(key: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest entries per row, largest first; ties go to the lower column."""
    k = min(k, key.shape[1])
    if k == 0:
        return np.empty((key.shape[0], 0), dtype=np.int64)
    vals_t, idx_t = torch.topk(torch.from_numpy(key), k, dim=1)
    vals, idx = vals_t.numpy(), idx_t.numpy().copy()
    # topk may cut through a run of ties: those rows are redone with a stable sort (lowest column wins).
    kth = vals[:, -1:]
    cut = ((key == kth).sum(axis=1) > (vals == kth).sum(axis=1)) & np.isfinite(kth[:, 0])
    if cut.any():
        idx[cut] = np.argsort(-key[cut], axis=1, kind="stable")[:, :k]
        vals = np.take_along_axis(key, idx, axis=1)
    return np.take_along_axis(idx, np.lexsort((idx, -vals), axis=1), axis=1)


def _rank_from_tables(
    best: np.ndarray,
    agg: np.ndarray,
    labels: np.ndarray,
    threshold: float | None,
    new_whale: str,
) -> list[list[str]]:
    """Assemble the ranked labels from per-whale best scores and aggregates ([Q, W] each)."""
    n_queries = best.shape[0]
    if threshold is None:
        above = np.zeros(best.shape, dtype=bool)
    else:
        above = best > threshold
    neg_inf = np.float32(-np.inf)
    top_above = _top_k(np.where(above, agg, neg_inf), TOP_K)
    top_rest = _top_k(np.where(above, neg_inf, best), TOP_K)
    n_above = np.minimum(above.sum(axis=1), TOP_K)
    n_rest = np.minimum((~above).sum(axis=1), TOP_K)
    ranked: list[list[str]] = []
    for q in range(n_queries):
        labels_q = list(labels[top_above[q, : n_above[q]]])
        if threshold is not None:
            labels_q.append(new_whale)
        labels_q.extend(labels[top_rest[q, : n_rest[q]]])
        ranked.append([str(x) for x in labels_q[:TOP_K]])
    return ranked


def rank_queries(
    scores: np.ndarray,
    gallery_labels: Sequence[str],
    threshold: float | None,
    *,
    mode: str = "sum",
    new_whale: str = NEW_WHALE,
) -> list[list[str]]:
    """Five distinct labels per query (fewer only when the gallery has fewer than five whales)."""
    scores = _check(scores, gallery_labels, mode)
    groups = WhaleGroups.from_labels(gallery_labels, new_whale)
    best = whale_best(scores, groups)
    agg = best if mode == "max" or threshold is None else whale_sum_above(scores, groups, threshold)
    return _rank_from_tables(best, agg, groups.labels, threshold, new_whale)


def default_candidates(scores: np.ndarray, n: int = 51) -> np.ndarray:
    """Threshold candidates: quantiles of each query's best score (these set the new_whale share), plus one
    just below every best score, so that "never new_whale first" is among the choices."""
    row_max = np.asarray(scores, dtype=np.float32).max(axis=1)
    quantiles = np.quantile(row_max, np.linspace(0.0, 1.0, n)).astype(np.float32)
    below = np.nextafter(row_max.min(), np.float32(-np.inf), dtype=np.float32)
    return np.unique(np.append(quantiles, below))


def _average_precisions(
    best: np.ndarray, agg: np.ndarray, truth_index: np.ndarray, truth_new: np.ndarray, threshold: float
) -> np.ndarray:
    """[Q] AP@5 of the ranking :func:`rank_queries` would give, from the rank of each query's truth.

    ``truth_index`` is the truth whale's column in ``best`` (-1 when absent from the gallery) and
    ``truth_new`` marks queries whose truth is ``new_whale``. Ties are ordered as in :func:`_top_k`.
    """
    ap = np.zeros(best.shape[0])
    whales = np.arange(best.shape[1])
    for rows in _row_chunks(*best.shape):
        b, a, w = best[rows], agg[rows], truth_index[rows]
        above = b > threshold
        n_above = above.sum(axis=1)
        rank = (n_above + 1).astype(np.float64)
        known = w >= 0
        if known.any():
            r = np.flatnonzero(known)
            wk = w[r][:, None]
            earlier = whales[None, :] < wk
            bw = np.take_along_axis(b[r], wk, axis=1)
            aw = np.take_along_axis(a[r], wk, axis=1)
            beats_above = above[r] & ((a[r] > aw) | ((a[r] == aw) & earlier))
            beats_rest = ~above[r] & ((b[r] > bw) | ((b[r] == bw) & earlier))
            truth_above = np.take_along_axis(above[r], wk, axis=1)[:, 0]
            rank[r] = np.where(truth_above, 1 + beats_above.sum(axis=1), n_above[r] + 2 + beats_rest.sum(axis=1))
        hit = (known | truth_new[rows]) & (rank <= TOP_K)
        ap[rows] = np.where(hit, 1.0 / rank, 0.0)
    return ap


def tune_threshold(
    scores: np.ndarray,
    gallery_labels: Sequence[str],
    truth: Sequence[str],
    *,
    mode: str = "sum",
    candidates: np.ndarray | None = None,
    new_whale: str = NEW_WHALE,
) -> tuple[float, float]:
    """The candidate threshold with the highest MAP@5 against ``truth`` (lowest on ties), and that MAP@5.

    MAP@5 is computed from the rank of each query's true label (the same order as :func:`rank_queries`)
    instead of building every ranking, so that 50 candidates on an 8k x 16k matrix take seconds.
    """
    scores = _check(scores, gallery_labels, mode)
    if len(truth) != scores.shape[0]:
        raise ValueError(f"{len(truth)} truth labels for {scores.shape[0]} queries")
    if len(truth) == 0:
        raise ValueError("no queries to score")
    if candidates is None:
        candidates = default_candidates(scores)
    candidates = np.asarray(candidates, dtype=np.float64).ravel()
    if candidates.size == 0:
        raise ValueError("no threshold candidates")
    groups = WhaleGroups.from_labels(gallery_labels, new_whale)
    truth_arr = np.asarray(truth, dtype=str)
    pos = np.searchsorted(groups.labels, truth_arr)
    found = pos < len(groups)
    found[found] = groups.labels[pos[found]] == truth_arr[found]
    truth_index = np.where(found, pos, -1)
    truth_new = truth_arr == new_whale
    best = whale_best(scores, groups)
    best_t, best_map = float(candidates[0]), -1.0
    for t in candidates:
        agg = best if mode == "max" else whale_sum_above(scores, groups, float(t))
        value = float(_average_precisions(best, agg, truth_index, truth_new, float(t)).mean())
        if value > best_map:
            best_t, best_map = float(t), value
    return best_t, best_map


DEFAULT_NEW_WHALE_SHARE = 0.276  # the share of new_whale among the Kaggle 2019 test photos


def threshold_for_new_whale_share(
    scores: np.ndarray,
    gallery_labels: Sequence[str],
    share: float,
    *,
    mode: str = "sum",
    new_whale: str = NEW_WHALE,
) -> float:
    """A threshold that puts ``new_whale`` first for ``round(share * Q)`` queries (more if scores tie).

    ``new_whale`` is first exactly when no whale has an image above the threshold, i.e. when the
    query's best score over whale images is at or below it; so the answer is an order statistic of
    those per-query best scores and is the same in both modes (``mode`` is checked, not used).
    """
    scores = _check(scores, gallery_labels, mode)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    groups = WhaleGroups.from_labels(gallery_labels, new_whale)
    if len(groups) == 0:
        raise ValueError("the gallery has no whale images")
    row_max = np.sort(whale_best(scores, groups).max(axis=1))
    k = int(round(share * len(row_max)))
    if k == 0:
        return float(np.nextafter(row_max[0], np.float32(-np.inf)))
    return float(row_max[k - 1])


def holdout_threshold(scores: np.ndarray, gallery_labels: Sequence[str], truth: Sequence[str], *,
                      share: float = DEFAULT_NEW_WHALE_SHARE, mode: str = "sum", seed: int = 0
                      ) -> tuple[float, float, int]:
    """The ``new_whale`` threshold of a catalog without new_whale photos, tuned out of fold: individuals are held
    out WHOLE (drawn at random until their queries are about ``share`` of the rows), their catalog columns
    removed, so that their queries play new_whale with the score distributions of real unknown animals.
    Returns ``(threshold, MAP@5 of that mix, held-out individuals)``."""
    if share <= 0:  # no unknown animals expected: the plain tuning (new_whale never first)
        return (*tune_threshold(scores, gallery_labels, truth, mode=mode), 0)
    truth = np.asarray(truth, dtype=str)
    gallery_labels = np.asarray(gallery_labels, dtype=str)
    whales, counts = np.unique(truth[truth != NEW_WHALE], return_counts=True)
    order = np.random.default_rng(seed).permutation(len(whales))
    held, covered = [], 0
    for k in order:
        if covered >= share * len(truth):
            break
        held.append(whales[k])
        covered += counts[k]
    if not held or len(held) == len(whales):
        raise ValueError("too few individuals in the out-of-fold rows to hold some out")
    out = np.isin(truth, held)
    keep = ~np.isin(gallery_labels, held)
    threshold, map5 = tune_threshold(np.asarray(scores)[:, keep], list(gallery_labels[keep]),
                                     list(np.where(out, NEW_WHALE, truth)), mode=mode)
    return threshold, map5, len(held)
