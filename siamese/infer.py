"""Branch features for a list of images (deterministic crop, no augmentation)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from data.datasets import ImageDataset, make_loader
from data.device import autocast, image_batch


class Flipped(torch.nn.Module):
    """A module applied to horizontally mirrored images."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module
        self.out_dim = getattr(module, "out_dim", 0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images.flip(-1))


class _View(Dataset):
    """Item ``i`` is random training view number ``draw`` of image ``i`` (a pure function of seed, i, draw)."""

    def __init__(self, images: ImageDataset, draw: int):
        self.images, self.draw = images, draw

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images.get(index, draw=self.draw)


@torch.no_grad()
def compute_features(branch: torch.nn.Module, paths: Sequence[Path], boxes: Sequence, size: int, *,
                     channels: int = 3, batch: int = 64, device: torch.device | str = "cpu",
                     workers: int | None = None, max_megapixels: float = 60.0,
                     amp: bool = True, desc: str = "features", view: int = 0, seed: int = 0,
                     augment_strength: float = 1.0, augment: str = "fluke",
                     flip_tta: bool = False) -> np.ndarray:
    """The branch over every image, float32 ``[N, D]``, in input order: the test-time crop (margin 0.05) when
    ``view`` is 0, else random training view number ``view`` (training margin and augmentation at
    ``augment_strength``, seeded by ``seed``, the view and the image's position). ``flip_tta``: the mean of the
    features of each image and of its horizontal mirror."""
    device = torch.device(device)
    dataset = ImageDataset(list(paths), list(boxes), size, channels=channels, train=view > 0, seed=seed,
                           max_megapixels=max_megapixels, augment_strength=augment_strength, augment=augment)
    if view > 0:
        dataset = _View(dataset, view)
    loader = make_loader(dataset, batch, shuffle=False, workers=workers)
    was_training = branch.training
    branch.eval()
    out = []
    try:
        for images in tqdm(loader, desc=desc, leave=False, unit="batch"):
            images = image_batch(images, device)
            with autocast(device, amp):
                features = branch(images).float()
                if flip_tta:
                    features = 0.5 * (features + branch(images.flip(-1)).float())
                out.append(features.cpu())
    finally:
        branch.train(was_training)
    if not out:
        return np.zeros((0, getattr(branch, "out_dim", 0)), np.float32)
    return torch.cat(out).numpy()
