"""Keypoint matching with geometric verification: how many local features of two fluke crops agree on one
homography (the approach of HotSpotter and other photo-ID tools, here as one more score matrix to blend).

A fluke seen from behind is close to a plane, so two photos of the same individual are related by a homography
however the animal was posed; the pattern of white patches, spots and scars gives SIFT keypoints that survive
lighting changes. Per pair: descriptors matched by Lowe's ratio test, a robust homography fitted to the matches
(OpenCV's MAGSAC++), and the number of inliers as the score. Needs no training, so whales known from one
photo are matched as well as the rest.

Speed: for one query all catalog descriptors are compared in chunked matrix products, each catalog keypoint
keeping its two nearest query keypoints (the ratio test run from the catalog side, which needs no per-image
bookkeeping); only catalog images with ``min_matches`` ratio-test matches go to the homography fit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from data import cache as data_cache
from data.distributed import SINGLE, Shards
from data.errors import InputError
from data.images import load_crop
from data.settings import Keypoints as KeypointSection
from data.settings import check

DESCRIPTOR_DIM = 128


_DEFAULTS = check({}, KeypointSection, path="keypoints")  # the defaults live in the schema (data/settings.py)


@dataclass(frozen=True)
class KeypointSettings:
    """The ``keypoints:`` section of a config as typed settings (defaults: :class:`data.settings.Keypoints`)."""

    enabled: bool = _DEFAULTS["enabled"]
    width: int = _DEFAULTS["width"]  # crop width in pixels; the height keeps the crop window's aspect
    max_keypoints: int = _DEFAULTS["max_keypoints"]  # the strongest SIFT keypoints kept per image
    clahe: float = _DEFAULTS["clahe"]  # CLAHE clip limit on the grey crop (0: off)
    ratio: float = _DEFAULTS["ratio"]  # Lowe's ratio test
    min_matches: int = _DEFAULTS["min_matches"]  # fewer ratio-test matches: score 0 without a homography fit
    ransac_px: float = _DEFAULTS["ransac_px"]  # inlier distance of the homography fit, in pixels of the crop
    margin: float = _DEFAULTS["margin"]
    chunk: int = _DEFAULTS["chunk"]  # catalog keypoints per matrix product

    @classmethod
    def from_config(cls, section: dict | None, source: str | None = None) -> KeypointSettings:
        """Settings from a (partial) section: keys and types checked by the schema, then the ranges here."""
        if section is not None and not isinstance(section, dict):
            raise InputError(source, f"keypoints: expected a mapping of settings, got {section!r}")
        values = check(dict(section or {}), KeypointSection, source, path="keypoints")
        s = cls(**{k: float(v) if isinstance(_DEFAULTS[k], float) else v for k, v in values.items()})
        checks = [(s.width >= 32, "width must be at least 32"), (s.max_keypoints >= 4, "max_keypoints must be >= 4"),
                  (s.clahe >= 0, "clahe must be >= 0"), (0 < s.ratio <= 1, "ratio must be in (0, 1]"),
                  (s.min_matches >= 4, "min_matches must be >= 4 (a homography needs 4 points)"),
                  (s.ransac_px > 0, "ransac_px must be > 0"), (s.margin >= 0, "margin must be >= 0"),
                  (s.chunk >= 1, "chunk must be >= 1")]
        for ok, problem in checks:
            if not ok:
                raise InputError(source, f"keypoints: {problem}")
        return s

    def key(self) -> str:
        """What the extracted keypoints depend on among the settings."""
        d = asdict(self)
        return json.dumps({k: d[k] for k in ("width", "max_keypoints", "clahe", "margin")}, sort_keys=True)


@dataclass
class Keypoints:
    """Keypoints of a list of images, concatenated: image ``i`` owns rows ``offsets[i]:offsets[i + 1]``."""

    names: np.ndarray  # [N] str
    offsets: np.ndarray  # [N + 1] int64
    points: np.ndarray  # [K, 2] float32, (x, y) in crop pixels
    descriptors: np.ndarray  # [K, 128] float32, unit length

    def __len__(self) -> int:
        return len(self.names)

    def image(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rows = slice(int(self.offsets[i]), int(self.offsets[i + 1]))
        return self.points[rows], self.descriptors[rows]

    def owner(self) -> np.ndarray:
        """[K] the image index of every keypoint."""
        return np.repeat(np.arange(len(self.names)), np.diff(self.offsets))

    def take(self, rows) -> Keypoints:
        """The images ``rows`` (a slice or indices) as a set of their own."""
        idx = np.arange(len(self.names))[rows]
        return Keypoints.from_lists(self.names[rows], [self.image(int(i)) for i in idx])

    @classmethod
    def concat(cls, sets: Sequence[Keypoints]) -> Keypoints:
        return cls.from_lists(np.concatenate([k.names for k in sets]),
                              [k.image(i) for k in sets for i in range(len(k))])

    @classmethod
    def from_lists(cls, names: Sequence[str], parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> Keypoints:
        counts = [len(p) for p, _ in parts]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        points = np.concatenate([p for p, _ in parts]) if parts else np.zeros((0, 2))
        desc = np.concatenate([d for _, d in parts]) if parts else np.zeros((0, DESCRIPTOR_DIM))
        return cls(np.asarray(names, dtype=str), offsets, points.astype(np.float32).reshape(-1, 2),
                   desc.astype(np.float32).reshape(-1, DESCRIPTOR_DIM))


def detect(gray: np.ndarray, s: KeypointSettings) -> tuple[np.ndarray, np.ndarray]:
    """SIFT keypoints of a uint8 grey crop: ``[K, 2]`` positions and ``[K, 128]`` unit-length descriptors."""
    gray = np.ascontiguousarray(gray)
    if s.clahe > 0:
        gray = cv2.createCLAHE(clipLimit=s.clahe, tileGridSize=(4, 4)).apply(gray)
    kps, desc = cv2.SIFT_create(nfeatures=s.max_keypoints).detectAndCompute(gray, None)
    if desc is None or not kps:
        return np.zeros((0, 2), np.float32), np.zeros((0, DESCRIPTOR_DIM), np.float32)
    keep = np.argsort([-k.response for k in kps], kind="stable")[:s.max_keypoints]  # SIFT keeps ties past the cap
    desc = desc[keep] / np.maximum(np.linalg.norm(desc[keep], axis=1, keepdims=True), 1e-7)
    return np.float32([kps[i].pt for i in keep]), desc.astype(np.float32)


def extract(paths: Sequence[Path], boxes: Sequence, names: Sequence[str], s: KeypointSettings, *,
            max_megapixels: float = 60.0, desc: str = "keypoints") -> Keypoints:
    """Keypoints of every image's test-time crop (its box with ``s.margin``, the whole image without a box)."""
    size = (s.width, None)  # the window's own aspect: 2.15:1 around a box, the photo's without one
    parts = []
    for path, box in tqdm(list(zip(paths, boxes)), desc=desc, unit="img", leave=False):
        crop = load_crop(path, box, size, channels=1, margin=s.margin, max_megapixels=max_megapixels)
        parts.append(detect(crop[:, :, 0], s))
    return Keypoints.from_lists(names, parts)


def _arrays(kp: Keypoints) -> dict[str, np.ndarray]:
    return {"names": kp.names, "offsets": kp.offsets, "points": kp.points, "descriptors": kp.descriptors}


def _from_npz(stored: dict[str, np.ndarray]) -> Keypoints:
    return Keypoints(stored["names"], stored["offsets"], stored["points"], stored["descriptors"])


def cached_keypoints(cache: Path, paths: Sequence[Path], boxes: Sequence, names: Sequence[str],
                     s: KeypointSettings, *, shards: Shards = SINGLE, **kwargs) -> Keypoints:
    """:func:`extract`, each photo's keypoints reused from ``cache`` (``.npz``, or another cache file beside it)
    while its bytes, its box and the settings hold (:mod:`data.cache`): a grown catalog costs its new photos.
    With several ``shards`` each process extracts its share of the missing photos and rank 0 writes the cache."""
    paths, boxes, names = list(paths), list(boxes), np.asarray(names, dtype=str)

    def compute(rows: np.ndarray) -> Keypoints:
        return extract([paths[i] for i in rows], [boxes[i] for i in rows], names[rows], s, **kwargs)

    return data_cache.cached_set(cache, data_cache.row_keys(s.key(), paths, boxes), names, compute=compute,
                                 load=_from_npz, to_arrays=_arrays, concat=Keypoints.concat, shards=shards)


def ratio_matches(query_desc: torch.Tensor, gallery_desc: torch.Tensor, ratio: float, chunk: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """For every gallery keypoint its nearest query keypoint and whether it passes the ratio test
    (nearest distance < ``ratio`` x second nearest); no pass when the query has fewer than 2 keypoints."""
    n = gallery_desc.shape[0]
    if query_desc.shape[0] < 2 or n == 0:
        return np.zeros(n, np.int64), np.zeros(n, bool)
    qt = query_desc.T.contiguous()
    top = torch.empty(n, 2, dtype=gallery_desc.dtype)
    idx = torch.empty(n, 2, dtype=torch.long)
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        torch.topk(gallery_desc[rows] @ qt, 2, dim=1, out=(top[rows], idx[rows]))
    # unit vectors: squared distance 2 - 2 cos; d1 < ratio * d2 compared squared
    squared = (2.0 - 2.0 * top).clamp_min(0)
    good = squared[:, 0] < ratio**2 * squared[:, 1]
    return idx[:, 0].numpy().copy(), good.numpy()


def homography_inliers(src: np.ndarray, dst: np.ndarray, px: float) -> int:
    """Inliers of a MAGSAC++ homography from ``src`` to ``dst`` point matches (0 when no fit)."""
    if len(src) < 4:
        return 0
    _, mask = cv2.findHomography(src.astype(np.float32), dst.astype(np.float32), cv2.USAC_MAGSAC, px)
    return 0 if mask is None else int(mask.sum())


def inlier_row(points: np.ndarray, desc: np.ndarray, gallery: Keypoints, owner: np.ndarray,
               gallery_desc: torch.Tensor, s: KeypointSettings, skip: int | None = None) -> np.ndarray:
    """[G] inlier counts of one query image against every gallery image (``skip``: a column left at 0)."""
    out = np.zeros(len(gallery), np.float32)
    nearest, good = ratio_matches(torch.from_numpy(desc), gallery_desc, s.ratio, s.chunk)
    rows = np.flatnonzero(good)
    counts = np.bincount(owner[rows], minlength=len(gallery))
    if skip is not None:
        counts[skip] = 0
    starts = np.searchsorted(owner[rows], np.arange(len(gallery) + 1))  # owner is sorted, so rows are too
    for j in np.flatnonzero(counts >= s.min_matches):
        pair = rows[starts[j]:starts[j + 1]]
        out[j] = homography_inliers(points[nearest[pair]], gallery.points[pair], s.ransac_px)
    return out


def inlier_matrix(query: Keypoints, gallery: Keypoints, s: KeypointSettings, *, exclude_self: bool = True,
                  desc: str = "matching") -> np.ndarray:
    """[Q, G] homography inlier counts of every query x gallery pair; with ``exclude_self`` a query is not
    scored against the gallery image of the same name (that entry stays 0)."""
    owner = gallery.owner()
    gallery_desc = torch.from_numpy(gallery.descriptors)
    column = {str(name): j for j, name in enumerate(gallery.names)} if exclude_self else {}
    out = np.zeros((len(query), len(gallery)), np.float32)
    for i in tqdm(range(len(query)), desc=desc, unit="query", leave=False):
        points, d = query.image(i)
        out[i] = inlier_row(points, d, gallery, owner, gallery_desc, s, column.get(str(query.names[i])))
    return out
