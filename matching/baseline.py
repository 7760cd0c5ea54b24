"""Raw-pixel baseline: cosine nearest neighbour on tiny grey thumbnails, ranked with ``new_whale``.

It measures how much of a catalog can be matched without learning anything. Each photo (or its fluke
crop) is squashed to ``size`` x ``size`` grey pixels, mean-centred and L2-normalised; a query's score
against a gallery photo is their cosine; whales are ranked by their best photo and ``new_whale`` is
inserted by a threshold tuned on the truth itself (so the number is an upper bound for this method).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.catalog import NEW_WHALE, read_boxes, read_train_csv
from data.images import Box, load_crop
from matching.ranking import default_candidates, tune_threshold


@dataclass(frozen=True)
class BaselineResult:
    map5: float
    threshold: float
    queries: int
    gallery: int


def pixel_vectors(paths: Sequence[Path], size: int = 32, boxes: Mapping[str, Box] | None = None,
                  progress: bool = False) -> np.ndarray:
    """[N, size*size] float32 unit vectors: grey thumbnails of the photos (or of their boxes), mean-centred."""
    out = np.empty((len(paths), size * size), np.float32)
    for i, path in enumerate(tqdm(paths, desc="thumbnails", unit="photo", disable=not progress)):
        box = None if boxes is None else boxes.get(Path(path).name)
        img = load_crop(path, box, size, channels=1, margin=0.0).astype(np.float32).ravel()
        img -= img.mean()
        out[i] = img / max(float(np.linalg.norm(img)), 1e-6)
    return out


def cosine_map5(queries: np.ndarray, gallery: np.ndarray, gallery_labels: Sequence[str],
                truth: Sequence[str]) -> tuple[float, float]:
    """(MAP@5, threshold) of ranking whales by their best cosine, ``new_whale`` placed at the tuned threshold."""
    scores = queries @ gallery.T
    # Besides the default candidates, one below every score: "never put new_whale first".
    candidates = np.append(default_candidates(scores), np.float32(scores.min()) - np.float32(1e-3))
    threshold, value = tune_threshold(scores, list(gallery_labels), list(truth), mode="max", candidates=candidates)
    return value, threshold


def raw_pixel_baseline(data_dir: str | Path, *, crop: bool = False, size: int = 32,
                       truth_csv: str | Path | None = None, boxes_csv: str | Path | None = None,
                       progress: bool = False) -> BaselineResult:
    """The baseline on a catalog folder: test photos (``truth.csv``) against its non-new_whale train photos.

    ``crop`` uses the true fluke boxes (``truth_boxes.csv``) instead of the whole photo.
    """
    data_dir = Path(data_dir)
    train = read_train_csv(data_dir / "train.csv")
    gallery = train[train["Id"] != NEW_WHALE]
    truth = read_train_csv(truth_csv or data_dir / "truth.csv")
    boxes = read_boxes(boxes_csv or data_dir / "truth_boxes.csv") if crop else None
    g = pixel_vectors([data_dir / "train" / n for n in gallery["Image"]], size, boxes, progress)
    q = pixel_vectors([data_dir / "test" / n for n in truth["Image"]], size, boxes, progress)
    value, threshold = cosine_map5(q, g, gallery["Id"].tolist(), truth["Id"].tolist())
    return BaselineResult(value, threshold, len(q), len(g))
