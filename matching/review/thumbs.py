"""Thumbnails of the review page: the fluke crop (box of ``boxes.csv`` when there is one) as a small JPEG.

Crops come from :func:`data.images.load_crop` (the same decoding and crop window the models see, JPEG
shrink-on-load for large photos), stretched back to the crop window's own aspect. Each thumbnail is a file
named by a hash of the photo, its box and the thumbnail size, so an unchanged photo is not decoded again
when the page is rebuilt.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from data.images import TEST_MARGIN, Box, crop_window, image_size, load_crop
from data.io import atomic_path

THUMB_HEIGHT = 88
MAX_ASPECT = 3.0
VERSION = "1"


def thumb_name(kind: str, name: str, box: Box | None, height: int = THUMB_HEIGHT) -> str:
    key = f"{VERSION}|{kind}|{name}|{box}|{height}"
    return hashlib.sha1(key.encode()).hexdigest()[:20] + ".jpg"


def make_thumbnail(path: Path, box: Box | None, height: int = THUMB_HEIGHT, quality: int = 82) -> bytes:
    """JPEG bytes of the crop of ``path`` around ``box``, ``height`` pixels high at the crop's aspect."""
    width_px, height_px = image_size(path)
    x0, y0, x1, y1 = crop_window(width_px, height_px, box, TEST_MARGIN)
    aspect = min(max((x1 - x0) / max(y1 - y0, 1e-6), 1.0 / MAX_ASPECT), MAX_ASPECT)
    width = max(1, round(height * aspect))
    square = load_crop(path, box, max(width, height), channels=3)
    img = Image.fromarray(np.ascontiguousarray(square)).resize((width, height), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def make_thumbnails(items: Sequence[tuple[str, str]], path_of: Callable[[str, str], Path],
                    box_of: Callable[[str], Box | None], out_dir: Path, *, embed: bool = False,
                    progress: bool = True) -> list[str]:
    """One page source per ``(kind, name)`` item: ``thumbs/<file>`` under ``out_dir`` (made when missing), or a
    ``data:`` URI with ``embed``. ``kind`` is ``test`` or ``train``; ``path_of(kind, name)`` finds the photo."""
    thumbs_dir = out_dir / "thumbs"
    sources: list[str] = []
    made = 0
    bar: Iterable = tqdm(items, desc="thumbnails", unit="img", disable=not progress)
    for kind, name in bar:
        box = box_of(name)
        file = thumbs_dir / thumb_name(kind, name, box)
        if file.is_file():
            data = file.read_bytes() if embed else b""
        else:
            data = make_thumbnail(path_of(kind, name), box)
            made += 1
            if not embed:
                with atomic_path(file) as tmp:
                    tmp.write_bytes(data)
                    tmp.chmod(0o644)
        if embed:
            sources.append("data:image/jpeg;base64," + base64.b64encode(data).decode("ascii"))
        else:
            sources.append(f"thumbs/{file.name}")
    return sources
