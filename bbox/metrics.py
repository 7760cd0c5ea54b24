"""Box overlap: intersection over union of two boxes, and the mean over a set of photos."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

Box = Sequence[float]


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (continuous pixels); 0 for empty boxes."""
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(ix, 0.0) * max(iy, 0.0)
    area_a = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    union = area_a + area_b - inter
    return float(inter / union) if union > 0 else 0.0


def mean_iou(pred: Mapping[str, Box], truth: Mapping[str, Box]) -> float:
    """Mean IoU over every photo of ``truth``; a photo without a predicted box counts 0."""
    if not truth:
        raise ValueError("no true boxes to compare with")
    return sum(iou(pred[name], box) if name in pred else 0.0 for name, box in truth.items()) / len(truth)
