"""Image decoding (pyvips) and the fluke crop: upright, box plus margin widened to 2.15:1, squashed to S x S.

Every photo is decoded with libvips, EXIF-rotated upright (boxes always refer to the upright image),
flattened if it has an alpha channel and converted to 8-bit sRGB or greyscale, whatever the file holds
(grey, CMYK, 16-bit). Decoding is strict: a truncated or corrupt file raises :class:`InputError` naming it,
and a photo larger than ``max_megapixels`` is refused from its header, before any pixel is decoded.
:func:`load_crop` uses JPEG shrink-on-load so a large photo destined for a small crop is decoded at a
fraction of its size; boxes stay in original pixels and the scale is tracked.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path

import numpy as np
import pyvips
import torch

from data.errors import InputError

Box = tuple[float, float, float, float]

ASPECT = 2.15  # width:height of the crop around a fluke (5th place / Piotte's "anisotropy")
TEST_MARGIN = 0.05  # margin around the box at test time, as a fraction of the box size per side

# ImageNet statistics; the 1-channel values are their luminance-weighted (Rec. 601) averages.
_LUMA = (0.299, 0.587, 0.114)
_RGB_MEAN = (0.485, 0.456, 0.406)
_RGB_STD = (0.229, 0.224, 0.225)
MEAN: dict[int, tuple[float, ...]] = {3: _RGB_MEAN, 1: (sum(w * m for w, m in zip(_LUMA, _RGB_MEAN)),)}
STD: dict[int, tuple[float, ...]] = {3: _RGB_STD, 1: (sum(w * s for w, s in zip(_LUMA, _RGB_STD)),)}

_JPEG_SHRINKS = (8, 4, 2)
_ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")


def _vips_problem(err: pyvips.Error) -> str:
    """The distinct lines of libvips' error text, without its generic wrappers."""
    lines = []
    for line in f"{err.message}\n{err.detail}".splitlines():
        line = line.strip()
        if line and not line.startswith("unable to") and line not in lines:
            lines.append(line)
    return "; ".join(lines)


def _open_header(path: Path, max_megapixels: float) -> pyvips.Image:
    """Open ``path`` lazily (header only) and refuse it when it is missing, unreadable or too large."""
    if not path.is_file():
        raise InputError(path, "image file not found")
    try:
        image = pyvips.Image.new_from_file(str(path), fail_on="error")
    except pyvips.Error as err:
        raise InputError(path, f"not a readable image ({_vips_problem(err)})") from None
    megapixels = image.width * image.height / 1e6
    if megapixels > max_megapixels:
        raise InputError(
            path,
            f"image is {image.width}x{image.height} ({megapixels:.1f} megapixels), over the limit of "
            f"{max_megapixels:g} megapixels; refused as a possible decompression bomb",
        )
    return image


def _upright_size(header: pyvips.Image) -> tuple[int, int]:
    orientation = header.get("orientation") if header.get_typeof("orientation") else 1
    if orientation in _ROTATED_ORIENTATIONS:
        return header.height, header.width
    return header.width, header.height


def _to_channels(image: pyvips.Image, channels: int, path: Path) -> pyvips.Image:
    """8-bit sRGB (3 bands) or greyscale (1 band), alpha flattened onto black; still lazy."""
    try:
        image = image.colourspace("srgb" if channels == 3 else "b-w")
        if image.hasalpha():
            image = image.flatten()
        if image.bands != channels:
            image = image.extract_band(0, n=channels)
        return image.cast("uchar")
    except pyvips.Error as err:
        raise InputError(path, f"unsupported colour layout ({_vips_problem(err)})") from None


def _pixels(image: pyvips.Image, path: Path) -> np.ndarray:
    """Evaluate the lazy pipeline (this is where a truncated file is detected) into an HxWxC array."""
    try:
        array = image.numpy()
    except pyvips.Error as err:
        raise InputError(path, f"truncated or corrupt image ({_vips_problem(err)})") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array, dtype=np.uint8)


def _decode(path: Path, shrink: int = 1) -> pyvips.Image:
    """The upright image, JPEG-shrunk by ``shrink`` at load time (1 = full size); still lazy."""
    options = {"shrink": shrink} if shrink > 1 else {}
    try:
        return pyvips.Image.new_from_file(str(path), fail_on="error", **options).autorot()
    except pyvips.Error as err:
        raise InputError(path, f"not a readable image ({_vips_problem(err)})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """Upright ``(width, height)`` of an image, read from its header only."""
    return _upright_size(_open_header(Path(path), math.inf))


def crop_window(width: int, height: int, box: Box | None, margin: float, aspect: float = ASPECT) -> Box:
    """The crop ``(x0, y0, x1, y1)`` for ``box`` in a ``width`` x ``height`` image.

    The box grows by ``margin`` times its size on every side, its short side then grows around the
    box centre to a ``aspect`` width:height ratio, and the result is clipped to the image (so the ratio
    holds only where the image is large enough). No box means the whole image. A box that is
    empty or lies entirely outside the image raises ``ValueError``.
    """
    if box is None:
        return 0.0, 0.0, float(width), float(height)
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {box} is empty or not finite")
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise ValueError(f"box {box} lies outside the {width}x{height} image")
    w = (x1 - x0) * (1 + 2 * margin)
    h = (y1 - y0) * (1 + 2 * margin)
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (
        max(0.0, cx - w / 2),
        max(0.0, cy - h / 2),
        min(float(width), cx + w / 2),
        min(float(height), cy + h / 2),
    )


def jpeg_shrink(window: Box, size: int | tuple[int, int]) -> int:
    """The largest JPEG shrink-on-load factor (1, 2, 4 or 8) keeping ``window`` at least ``size`` pixels on its
    short side, or at least ``(width, height)`` pixels on each side."""
    x0, y0, x1, y1 = window
    if isinstance(size, tuple):
        return next((k for k in _JPEG_SHRINKS if (x1 - x0) / k >= size[0] and (y1 - y0) / k >= size[1]), 1)
    smallest = min(x1 - x0, y1 - y0)
    return next((k for k in _JPEG_SHRINKS if smallest / k >= size), 1)


def load_image(path: str | Path, *, channels: int = 3, max_megapixels: float = 60.0) -> np.ndarray:
    """The whole upright image at full size, uint8 ``[H, W, channels]``."""
    _check_channels(channels)
    path = Path(path)
    _open_header(path, max_megapixels)
    return _pixels(_to_channels(_decode(path), channels, path), path)


def load_crop(
    path: str | Path,
    box: Box | None,
    size: int | tuple[int, int | None],
    *,
    channels: int = 3,
    margin: float = TEST_MARGIN,
    max_megapixels: float = 60.0,
) -> np.ndarray:
    """The :func:`crop_window` of ``box`` (upright original pixels) squashed to uint8 ``[size, size, C]``, or to
    ``[height, width, C]`` when ``size`` is ``(width, height)``; ``(width, None)`` keeps the window's aspect."""
    _check_channels(channels)
    path = Path(path)
    header = _open_header(path, max_megapixels)
    width, height = _upright_size(header)
    try:
        window = crop_window(width, height, box, margin)
    except ValueError as err:
        raise InputError(path, str(err)) from None
    jpeg = str(header.get("vips-loader")).startswith("jpegload")
    width_out, height_out = (size, size) if isinstance(size, numbers.Integral) else size
    if height_out is None:
        height_out = max(1, round(width_out * (window[3] - window[1]) / (window[2] - window[0])))
    width_out, height_out = int(width_out), int(height_out)
    image = _decode(path, jpeg_shrink(window, (width_out, height_out)) if jpeg else 1)
    sx, sy = image.width / width, image.height / height
    left, top = min(int(window[0] * sx), image.width - 1), min(int(window[1] * sy), image.height - 1)
    right = min(max(math.ceil(window[2] * sx), left + 1), image.width)
    bottom = min(max(math.ceil(window[3] * sy), top + 1), image.height)
    region = _to_channels(image.crop(left, top, right - left, bottom - top), channels, path)
    resized = region.resize(width_out / region.width, vscale=height_out / region.height)
    return _pixels(resized, path)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, C]`` (or ``[H, W]``) image to a normalised float32 ``[C, H, W]`` tensor."""
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    _check_channels(channels)
    tensor = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(MEAN[channels]).view(-1, 1, 1)
    std = torch.tensor(STD[channels]).view(-1, 1, 1)
    return tensor.sub_(mean).div_(std).contiguous()
