"""Photos and fluke boxes for the detector: shrunk once when decoded, augmented box-aware in training."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from data.errors import InputError
from data.images import load_image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import
import albumentations as A  # noqa: E402

Box = tuple[float, float, float, float]


def load_photo(
    path: str | Path, max_side: int, max_megapixels: float = 60.0
) -> tuple[np.ndarray, float, tuple]:
    """The upright RGB photo shrunk so that its longer side is at most ``max_side``, the scale applied
    (shrunk pixels per original pixel) and the original ``(width, height)``."""
    image = load_image(path, channels=3, max_megapixels=max_megapixels)
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        scale = size[0] / w
    return image, scale, (w, h)


def train_augment(strength: float = 1.0) -> A.Compose:
    """Box-aware training transform of a whole photo: crops and zooms that keep the fluke, sideways
    stretch, mirror, small rotations, colour, blur and noise. ``strength`` 0 leaves the photo unchanged."""
    if strength <= 0:
        return A.Compose([], bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]))
    steps = [
        A.HorizontalFlip(p=0.5),
        A.BBoxSafeRandomCrop(erosion_rate=0.0, p=0.3 * strength),
        A.Affine(
            # zoom out for small flukes, and stretch sideways: real flukes are up to ~5:1 wide
            scale={"x": (1 - 0.4 * strength, 1 + 0.5 * strength), "y": (1 - 0.4 * strength, 1.0)},
            translate_percent=(-0.15, 0.15),
            rotate=(-8 * strength, 8 * strength),
            rotate_method="ellipse",
            fit_output=False,
            border_mode=cv2.BORDER_CONSTANT,
            fill=110,
            p=0.7,
        ),
        A.RandomBrightnessContrast(0.3 * strength, 0.3 * strength, p=0.8),
        A.HueSaturationValue(int(15 * strength), int(30 * strength), int(20 * strength), p=0.5),
        A.ToGray(num_output_channels=3, p=0.15 * strength),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=5)], p=0.2 * strength),
        A.GaussNoise(std_range=(0.01, 0.05), p=0.2 * strength),
        A.ImageCompression(quality_range=(40, 95), p=0.3 * strength),
    ]
    return A.Compose(
        steps,
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.5, clip=True),
    )


def to_tensor01(image: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` to float ``[3, H, W]`` in 0..1 (the detector normalises itself)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


class BoxDataset(Dataset):
    """Photos with one fluke box each, as ``(image tensor, {"boxes", "labels"})`` in shrunk pixels.

    Photos are decoded and shrunk on first use and kept in memory when ``cache`` is set. The
    augmentation of item ``i`` in epoch ``e`` is seeded by ``(seed, e, i)``, whatever the worker.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        boxes: Sequence[Box],
        *,
        max_side: int,
        augment: A.Compose | None,
        seed: int = 0,
        cache: bool = True,
        max_megapixels: float = 60.0,
    ):
        if len(paths) != len(boxes):
            raise ValueError("need one box per photo")
        self.paths, self.boxes = list(paths), [tuple(map(float, b)) for b in boxes]
        self.max_side, self.augment, self.seed = max_side, augment, seed
        self.max_megapixels, self.cache = max_megapixels, cache
        self._cache: dict[int, tuple[np.ndarray, float, tuple]] = {}
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def photo(self, i: int) -> tuple[np.ndarray, float, tuple]:
        if i in self._cache:
            return self._cache[i]
        item = load_photo(self.paths[i], self.max_side, self.max_megapixels)
        if self.cache:
            self._cache[i] = item
        return item

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, scale, _ = self.photo(i)
        h, w = image.shape[:2]
        box = np.clip(np.array(self.boxes[i]) * scale, 0, [w, h, w, h])
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            raise InputError(self.paths[i], f"box {self.boxes[i]} is empty inside the photo")
        boxes, labels = box[None], [1]
        if self.augment is not None:
            self.augment.set_random_seed(
                int(np.random.SeedSequence([self.seed, self.epoch, i]).generate_state(1)[0])
            )
            out = self.augment(image=image, bboxes=boxes, labels=labels)
            image, boxes, labels = out["image"], np.asarray(out["bboxes"]).reshape(-1, 4), list(out["labels"])
            keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
            boxes, labels = boxes[keep], [lab for lab, k in zip(labels, keep) if k]
        target = {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(labels, dtype=torch.int64),
        }
        return to_tensor01(image), target


def collate(batch: list) -> tuple[list, list]:
    """Detection batches are lists (photos differ in size)."""
    return [b[0] for b in batch], [b[1] for b in batch]


def split_folds(names: Sequence[str], folds: int, seed: int) -> dict[str, int]:
    """Each name's held-out fold, ``0 .. folds-1``, seeded random, fold sizes differing by at most 1."""
    if folds < 2:
        raise ValueError(f"need at least 2 folds, got {folds}")
    if len(names) < folds:
        raise InputError(None, f"{len(names)} training boxes cannot make {folds} folds")
    order = np.random.default_rng(seed).permutation(len(names))
    return {names[j]: int(k % folds) for k, j in enumerate(order)}


def resolve_paths(names: Sequence[str], folders: Sequence[Path], listing: Path) -> list[Path]:
    """The file of each image name, looked up in ``folders`` in order."""
    out = []
    for name in names:
        found = next((f / name for f in folders if (f / name).is_file()), None)
        if found is None:
            raise InputError(listing, f"image {name!r} not found in " + " or ".join(map(str, folders)))
        out.append(found)
    return out


def subset(boxes: Mapping[str, Box], limit: int | None, seed: int) -> dict[str, Box]:
    """At most ``limit`` of ``boxes`` (seeded random choice, original order); all when ``limit`` is None."""
    names = list(boxes)
    if limit is None or limit >= len(names):
        return dict(boxes)
    keep = set(np.random.default_rng(seed).choice(len(names), size=int(limit), replace=False).tolist())
    return {n: boxes[n] for i, n in enumerate(names) if i in keep}


class PhotoDataset(Dataset):
    """Photos for prediction: ``(index, shrunk uint8 image, scale, original (width, height))``."""

    def __init__(self, paths: Sequence[Path], *, max_side: int, max_megapixels: float = 60.0):
        self.paths, self.max_side, self.max_megapixels = list(paths), max_side, max_megapixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, float, tuple]:
        return (i, *load_photo(self.paths[i], self.max_side, self.max_megapixels))


def collate_photos(batch: list) -> list:
    return batch
