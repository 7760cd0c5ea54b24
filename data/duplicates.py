"""Near-duplicate photos: a perceptual hash to find candidates, image size and thumbnails to confirm.

Two photos are near-duplicates (a re-encoded, lightly edited or re-uploaded copy) when their 64-bit
``imagehash.phash`` differ in at most ``max_bits`` bits, their upright sizes are equal, and their
``THUMB`` x ``THUMB`` greyscale thumbnails, each standardised to mean 0 and variance 1, differ by at most
``max_pixel_diff`` in mean squared difference (0 for copies, about 2 for unrelated photos).
Hamming distances are computed with numpy bit operations, a block of rows against all later rows at a
time, so memory stays bounded and no Python loop runs over pairs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

from data.images import image_size, load_crop

MAX_BITS = 6
MAX_PIXEL_DIFF = 0.1
THUMB = 32
HASH_INPUT = 2 * THUMB  # phash input side; phash itself works on a 32 x 32 DCT
BLOCK_ELEMENTS = 1 << 22  # hash pairs compared per numpy block (32 MiB of uint64)


def fingerprint(path: str | Path) -> tuple[int, tuple[int, int], np.ndarray]:
    """(64-bit phash, upright (width, height), uint8 ``THUMB`` x ``THUMB`` greyscale thumbnail) of a photo."""
    grey = load_crop(path, None, HASH_INPUT, channels=1, margin=0.0)[:, :, 0]
    bits = imagehash.phash(Image.fromarray(grey)).hash.ravel()
    value = int.from_bytes(np.packbits(bits).tobytes(), "big")
    thumb = grey.reshape(THUMB, 2, THUMB, 2).mean(axis=(1, 3)).round().astype(np.uint8)
    return value, image_size(path), thumb


def fingerprints(paths: Sequence[str | Path], *, workers: int | None = None, progress: bool = True
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hashes (uint64 ``[N]``), sizes (int ``[N, 2]``) and thumbnails (uint8 ``[N, THUMB, THUMB]``)."""
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        results = list(tqdm(pool.map(fingerprint, paths), total=len(paths), desc="hashing photos",
                            unit="img", disable=not progress))
    hashes = np.array([r[0] for r in results], dtype=np.uint64)
    sizes = np.array([r[1] for r in results], dtype=np.int64).reshape(-1, 2)
    thumbs = np.array([r[2] for r in results], dtype=np.uint8).reshape(-1, THUMB, THUMB)
    return hashes, sizes, thumbs


def close_hashes(hashes: np.ndarray, max_bits: int = MAX_BITS, block_elements: int = BLOCK_ELEMENTS
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All index pairs ``i < j`` whose hashes differ in at most ``max_bits`` bits, with those counts."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    rows = max(1, block_elements // max(n, 1))
    found_i, found_j, found_bits = [], [], []
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        bits = np.bitwise_count(hashes[start:stop, None] ^ hashes[None, start:])
        i, j = np.nonzero(bits <= max_bits)
        keep = j > i
        found_i.append(i[keep] + start)
        found_j.append(j[keep] + start)
        found_bits.append(bits[i[keep], j[keep]])
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_bits).astype(np.uint8)


def _standardised(thumbs: np.ndarray) -> np.ndarray:
    flat = thumbs.reshape(len(thumbs), int(np.prod(thumbs.shape[1:]))).astype(np.float32)
    flat -= flat.mean(axis=1, keepdims=True)
    return flat / np.maximum(flat.std(axis=1, keepdims=True), 1e-3)


def pixel_diff(thumbs_a: np.ndarray, thumbs_b: np.ndarray) -> np.ndarray:
    """Mean squared difference of standardised thumbnails, pairwise along the first axis."""
    return ((_standardised(thumbs_a) - _standardised(thumbs_b)) ** 2).mean(axis=1)


def find_duplicates(paths: Sequence[str | Path], names: Sequence[str] | None = None, *,
                    max_bits: int = MAX_BITS, max_pixel_diff: float = MAX_PIXEL_DIFF,
                    workers: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Near-duplicate pairs among ``paths`` as ``Image1, Image2, bits, pixel_diff``.

    Photos are named by ``names`` (default: the file names); ``Image1`` comes before ``Image2`` in
    ``paths``. A photo that cannot be decoded raises :class:`~data.errors.InputError`.
    """
    names = [Path(p).name for p in paths] if names is None else list(names)
    if len(names) != len(paths):
        raise ValueError(f"{len(names)} names for {len(paths)} paths")
    hashes, sizes, thumbs = fingerprints(paths, workers=workers, progress=progress)
    i, j, bits = close_hashes(hashes, max_bits)
    same_size = (sizes[i] == sizes[j]).all(axis=1)
    i, j, bits = i[same_size], j[same_size], bits[same_size]
    diff = pixel_diff(thumbs[i], thumbs[j])
    keep = diff <= max_pixel_diff
    pairs = pd.DataFrame({
        "Image1": [names[k] for k in i[keep]],
        "Image2": [names[k] for k in j[keep]],
        "bits": bits[keep].astype(int),
        "pixel_diff": diff[keep].astype(float).round(5),
    })
    return pairs.sort_values(["Image1", "Image2"], ignore_index=True)


def duplicate_groups(pairs_df: pd.DataFrame) -> dict[str, int]:
    """Connected groups of the pairs (union-find): ``{image: group}`` for every image in a pair.

    Groups are numbered 0, 1, ... in the order of their first image name.
    """
    names = sorted(set(pairs_df["Image1"]) | set(pairs_df["Image2"]))
    if not names:
        return {}
    index = {name: k for k, name in enumerate(names)}
    a = pairs_df["Image1"].map(index).to_numpy()
    b = pairs_df["Image2"].map(index).to_numpy()
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(names), len(names)))
    _, labels = connected_components(graph, directed=False)
    renumber: dict[int, int] = {}
    return {name: renumber.setdefault(int(label), len(renumber)) for name, label in zip(names, labels, strict=True)}
