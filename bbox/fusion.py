"""Box geometry for test-time augmentation: un-mirroring, scaling back, clipping, weighted box fusion."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bbox.metrics import iou


def unmirror(boxes: np.ndarray, width: float) -> np.ndarray:
    """Boxes ``[N, 4]`` found on the horizontal mirror of a ``width``-pixel image, in the image's frame."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)


def clip_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Boxes ``[N, 4]`` clipped to the ``width`` x ``height`` image."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return boxes


def weighted_box_fusion(
    boxes: Sequence[np.ndarray], scores: Sequence[np.ndarray], *, iou_thr: float = 0.55, skip_thr: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted box fusion (Solovyev et al. 2019) for one class over the detections of several runs.

    ``boxes[r]`` is ``[N_r, 4]`` and ``scores[r]`` ``[N_r]`` for run ``r`` (a model, or a model on a
    mirrored photo). Boxes scoring ``skip_thr`` or more are visited from the most confident; each joins the
    cluster whose fused box it overlaps best above ``iou_thr``, or starts one. A fused box is the
    score-weighted mean of its cluster; its score the mean cluster score times
    ``min(cluster size, runs) / runs``, so a box found by one run of two keeps half its score.
    Returns the fused boxes ``[M, 4]`` and scores ``[M]``, most confident first.
    """
    runs = len(boxes)
    if runs == 0:
        raise ValueError("no runs to fuse")
    flat = [
        (float(s), np.asarray(b, dtype=np.float64))
        for run_boxes, run_scores in zip(boxes, scores, strict=True)
        for b, s in zip(np.asarray(run_boxes).reshape(-1, 4), np.asarray(run_scores).reshape(-1), strict=True)
        if s >= skip_thr
    ]
    flat.sort(key=lambda item: -item[0])
    clusters: list[list[tuple[float, np.ndarray]]] = []
    fused: list[np.ndarray] = []
    for score, box in flat:
        overlaps = [iou(f, box) for f in fused]
        best = int(np.argmax(overlaps)) if overlaps else -1
        if best >= 0 and overlaps[best] > iou_thr:
            clusters[best].append((score, box))
            weights = np.array([s for s, _ in clusters[best]])
            fused[best] = (weights[:, None] * np.stack([b for _, b in clusters[best]])).sum(0) / weights.sum()
        else:
            clusters.append([(score, box)])
            fused.append(box)
    if not fused:
        return np.zeros((0, 4)), np.zeros(0)
    out_scores = np.array([np.mean([s for s, _ in c]) * min(len(c), runs) / runs for c in clusters])
    order = np.argsort(-out_scores, kind="stable")
    return np.stack(fused)[order], out_scores[order]
