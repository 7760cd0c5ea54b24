"""Torch datasets of fluke crops and image pairs, and the DataLoader factory.

Randomness in training mode is derived from ``(seed, epoch, index, draw)`` alone, never from worker
RNG state, so a batch does not depend on the number of workers, their order, or a resume. The epoch
lives in shared memory, so ``set_epoch`` reaches persistent DataLoader workers too (call it before
iterating the loader for that epoch).

Workers are started by a fork server, never by a plain fork: libvips keeps a pool of threads, and a
process forked after libvips has run hangs on its first image. The server is forked before any image
work, with this module (torch, pyvips, albumentations) preloaded, so only the first loader of a process
pays the start-up. Scripts that use workers need the ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from data.augment import make_augment
from data.images import TEST_MARGIN, Box, load_crop, to_tensor

TRAIN_MARGIN = (0.01, 0.09)  # random margin around the box in training, as a fraction of its size


def _as_box(box: Sequence[float] | None) -> Box | None:
    """A box as four floats; ``None`` or all-NaN (a missing row after a join) means no box."""
    if box is None:
        return None
    values = tuple(float(v) for v in box)
    if len(values) != 4:
        raise ValueError(f"a box has four values (x0, y0, x1, y1), got {box}")
    if all(math.isnan(v) for v in values):
        return None
    x0, y0, x1, y1 = values
    return x0, y0, x1, y1


class ImageDataset(Dataset):
    """Crops of ``paths`` around ``boxes`` as normalised ``[C, size, size]`` tensors.

    Test mode: margin 0.05, no augmentation. Train mode: a margin drawn from [0.01, 0.09] and
    :func:`data.augment.make_augment` (``augment``: fluke or affine) at ``augment_strength``, both seeded from
    ``(seed, epoch, index, draw)``.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        boxes: Sequence[Box | None],
        size: int,
        *,
        channels: int = 3,
        train: bool = False,
        seed: int = 0,
        max_megapixels: float = 60.0,
        augment_strength: float = 1.0,
        augment: str = "fluke",
    ):
        if len(paths) != len(boxes):
            raise ValueError(f"{len(paths)} paths but {len(boxes)} boxes")
        self.paths = [Path(p) for p in paths]
        self.boxes = [_as_box(b) for b in boxes]
        self.size = size
        self.channels = channels
        self.train = train
        self.seed = seed
        self.max_megapixels = max_megapixels
        self.augment = make_augment(augment, size, channels, augment_strength) if train else None
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random margins and augmentations the next items use."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, not {epoch}")
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.get(index)

    def get(self, index: int, draw: int = 0) -> torch.Tensor:
        """Item ``index``; in train mode ``draw`` selects an independent random view of it."""
        index = range(len(self))[index]
        path, box = self.paths[index], self.boxes[index]
        options = {"channels": self.channels, "max_megapixels": self.max_megapixels}
        if not self.train:
            return to_tensor(load_crop(path, box, self.size, margin=TEST_MARGIN, **options))
        rng = np.random.default_rng([self.seed, self.epoch, index, draw])
        crop = load_crop(path, box, self.size, margin=float(rng.uniform(*TRAIN_MARGIN)), **options)
        self.augment.set_random_seed(int(rng.integers(2**31)))
        return to_tensor(self.augment(image=crop)["image"])


class PairDataset(Dataset):
    """Pairs of :class:`ImageDataset` items with their target (1 same whale, 0 different).

    Item ``k`` is ``(a, b, y)``; in train mode the two images of every pair get their own random view
    (as the 5th place read each side independently), still a pure function of (seed, epoch, k).
    """

    def __init__(self, images: ImageDataset, pairs: np.ndarray, targets: np.ndarray):
        pairs = np.asarray(pairs, dtype=np.int64)
        targets = np.asarray(targets, dtype=np.float32)
        if pairs.ndim != 2 or pairs.shape[1] != 2:
            raise ValueError(f"pairs must have shape (N, 2), not {pairs.shape}")
        if targets.shape != (len(pairs),):
            raise ValueError(f"targets must have shape ({len(pairs)},), not {targets.shape}")
        if len(pairs) and (pairs.min() < 0 or pairs.max() >= len(images)):
            raise ValueError(f"pair indices must lie in [0, {len(images)})")
        self.images = images
        self.pairs = pairs
        self.targets = targets

    def set_epoch(self, epoch: int) -> None:
        self.images.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.images.epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = range(len(self))[k]
        a, b = self.pairs[k]
        return (
            self.images.get(int(a), draw=2 * k + 1),
            self.images.get(int(b), draw=2 * k + 2),
            torch.tensor(self.targets[k]),
        )


class EpochShuffle(Sampler[int]):
    """A random order that is a function of ``(seed, epoch)``: the dataset's epoch when it has one,
    else the number of times this sampler has been iterated."""

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset = dataset
        self.seed = seed
        self._iterations = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        epoch = getattr(self.dataset, "epoch", self._iterations)
        self._iterations += 1
        yield from np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset)).tolist()


def default_workers() -> int:
    """DataLoader workers when none are asked for: 0 without CUDA, else one per spare core (at most 8).

    On CPU the model and the decoding share the same few cores, so extra processes only add start-up
    cost and contention; with a GPU, decoding in parallel keeps it fed.
    """
    if not torch.cuda.is_available():
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores - 1))


def _worker_context() -> multiprocessing.context.BaseContext:
    """A fork server with the image stack preloaded (spawn where there is no fork server)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    workers: int | None = None,
    drop_last: bool = False,
    batch_sampler: Sequence[Sequence[int]] | None = None,
) -> DataLoader:
    """A DataLoader with a seeded generator, a (seed, epoch)-keyed shuffle, pinned memory on CUDA and
    persistent fork-server workers; ``workers=None`` means :func:`default_workers`. ``batch_sampler``:
    the index lists of the batches (``batch_size``, ``shuffle`` and ``drop_last`` then do not apply)."""
    workers = default_workers() if workers is None else workers
    return DataLoader(
        dataset,
        batch_size=1 if batch_sampler is not None else batch_size,
        batch_sampler=batch_sampler,
        sampler=EpochShuffle(dataset, seed) if shuffle and batch_sampler is None else None,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        multiprocessing_context=_worker_context() if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
        drop_last=drop_last and batch_sampler is None,
    )
