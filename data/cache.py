"""The one cache mechanism for per-photo artefacts (branch features, local keypoints): an ``.npz`` holding the
arrays, the image ``names`` and a ``key`` string. The key covers what the artefact depends on: every photo file
(path, size, modification time), its box and the producer's settings (crop margin, checkpoint, size ...), so a
replaced photo, a new ``boxes.csv`` or another model never reuses a stale entry. A truncated or corrupt cache file
reads as missing and is recomputed."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.errors import InputError
from data.io import load_npz


def inputs_digest(paths: Sequence[str | Path], boxes: Sequence) -> str:
    """A digest of every image file (resolved path, size, mtime) and its box, in order."""
    digest = hashlib.sha1()
    for path, box in zip(paths, boxes):
        stat = Path(path).stat()
        digest.update(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{box}\n".encode())
    return digest.hexdigest()


def cache_key(settings: str, paths: Sequence[str | Path], boxes: Sequence) -> str:
    """The key of an artefact made with ``settings`` (a string naming everything else it depends on) from these
    photos and boxes."""
    return f"{settings}|{inputs_digest(paths, boxes)}"


def read_cache(cache: Path, key: str, names: Sequence[str]) -> dict[str, np.ndarray] | None:
    """The arrays of ``cache`` when it exists, is readable, and holds ``key`` for exactly ``names``; else None."""
    if not Path(cache).is_file():
        return None
    try:
        stored = load_npz(cache)
    except InputError:
        return None
    if "key" not in stored or "names" not in stored or str(stored["key"]) != key:
        return None
    if not np.array_equal(stored["names"], np.asarray(names, dtype=str)):
        return None
    return stored
