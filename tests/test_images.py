"""Decoding (formats, EXIF orientation, bad files, size limit), the crop window and shrink-on-load."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import pyvips
import torch

from data.errors import InputError
from data.images import (
    MEAN,
    STD,
    crop_window,
    image_size,
    jpeg_shrink,
    load_crop,
    load_image,
    to_tensor,
)

REAL_FLUKES = Path(__file__).resolve().parents[2] / "shared" / "data" / "humpback_flukes"

RED, BLUE = (200, 40, 40), (30, 60, 210)


def two_colour(height: int = 48, width: int = 64) -> np.ndarray:
    """Left half RED, right half BLUE: easy to check after lossy coding, and not mirror-symmetric."""
    img = np.empty((height, width, 3), np.uint8)
    img[:, : width // 2] = RED
    img[:, width // 2 :] = BLUE
    return img


def smooth_pattern(height: int, width: int) -> np.ndarray:
    """A smooth, asymmetric RGB image (resampling by different methods gives nearly the same result)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 255 * x / width
    g = 255 * y / height
    b = 128 + 100 * np.sin(x / width * 7) * np.cos(y / height * 5)
    return np.clip(np.dstack([r, g, b]), 0, 255).astype(np.uint8)


def write(array: np.ndarray, path: Path, interpretation: str | None = None, **options) -> Path:
    image = pyvips.Image.new_from_array(array)
    if interpretation:
        image = image.copy(interpretation=interpretation)
    image.write_to_file(str(path), **options)
    return path


def halves(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean colour of the left and right quarters (away from the edge between the halves)."""
    w = img.shape[1]
    channels = img.shape[2]
    return img[:, : w // 4].reshape(-1, channels).mean(0), img[:, -w // 4 :].reshape(-1, channels).mean(0)


def test_rgb_jpeg_and_png_decode_to_uint8_hwc_with_their_colours(tmp_path):
    for name in ("rgb.jpg", "rgb.png"):
        img = load_image(write(two_colour(), tmp_path / name))
        assert img.shape == (48, 64, 3) and img.dtype == np.uint8
        left, right = halves(img)
        np.testing.assert_allclose(left, RED, atol=6)
        np.testing.assert_allclose(right, BLUE, atol=6)


def test_greyscale_jpeg_gives_one_channel_or_three_equal_channels(tmp_path):
    grey = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))
    path = write(grey, tmp_path / "grey.jpg")
    one = load_image(path, channels=1)
    three = load_image(path, channels=3)
    assert one.shape == (48, 64, 1) and three.shape == (48, 64, 3)
    assert np.abs(one[..., 0].astype(int) - grey).mean() < 3
    assert np.array_equal(three[..., 0], three[..., 1]) and np.array_equal(three[..., 1], three[..., 2])


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    cmyk = np.zeros((40, 60, 4), np.uint8)  # white | black (K) | cyan (C)
    cmyk[:, 20:40, 3] = 255
    cmyk[:, 40:, 0] = 255
    img = load_image(write(cmyk, tmp_path / "cmyk.jpg", "cmyk", Q=95))
    assert img.shape == (40, 60, 3)
    white, black, cyan = img[20, 10].astype(int), img[20, 30].astype(int), img[20, 50].astype(int)
    assert white.min() > 230
    assert black.max() < 70
    assert cyan[0] < 60 and cyan[2] > 180


def test_rgba_png_is_flattened_onto_black(tmp_path):
    rgba = np.dstack([two_colour(), np.full((48, 64), 255, np.uint8)])
    rgba[:, :16, 3] = 0  # transparent left quarter
    img = load_image(write(rgba, tmp_path / "rgba.png", "srgb"))
    assert img.shape == (48, 64, 3)
    assert img[:, :16].max() == 0
    np.testing.assert_array_equal(img[:, 16:32], np.broadcast_to(RED, (48, 16, 3)))


def test_16_bit_png_is_scaled_to_8_bits(tmp_path):
    deep = two_colour().astype(np.uint16) * 257
    path = write(deep, tmp_path / "deep.png", "rgb16")
    assert pyvips.Image.new_from_file(str(path)).format == "ushort"
    img = load_image(path)
    assert img.dtype == np.uint8
    np.testing.assert_array_equal(img, two_colour())


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_rotated_jpeg_comes_out_upright(tmp_path, orientation):
    upright = smooth_pattern(60, 100)
    # store the pixels the way a camera would: rotated so that applying `orientation` restores them
    stored = {6: np.rot90(upright, 1), 8: np.rot90(upright, -1), 3: np.rot90(upright, 2)}[orientation]
    image = pyvips.Image.new_from_array(np.ascontiguousarray(stored)).copy()
    image.set_type(pyvips.GValue.gint_type, "orientation", orientation)
    path = tmp_path / f"rot{orientation}.jpg"
    image.write_to_file(str(path), Q=95)

    assert image_size(path) == (100, 60)
    img = load_image(path)
    assert img.shape == (60, 100, 3)
    assert np.abs(img.astype(int) - upright).mean() < 4
    box = (10.0, 20.0, 40.0, 34.0)  # upright pixels
    x0, y0, x1, y1 = (round(v) for v in crop_window(100, 60, box, 0.05))
    expected = cv2.resize(upright[y0:y1, x0:x1], (16, 16), interpolation=cv2.INTER_AREA)
    assert np.abs(load_crop(path, box, 16).astype(int) - expected).mean() < 6
    wide = cv2.resize(upright[y0:y1, x0:x1], (24, 10), interpolation=cv2.INTER_AREA)
    assert load_crop(path, box, (24, 10)).shape == (10, 24, 3)
    assert np.abs(load_crop(path, box, (24, 10)).astype(int) - wide).mean() < 6
    assert load_crop(path, box, (43, None)).shape == (20, 43, 3)  # keeps the 2.15:1 window
    assert load_crop(path, None, (50, None), channels=1).shape == (30, 50, 1)  # the whole 100 x 60 photo
    assert load_crop(path, box, np.int64(16)).shape == (16, 16, 3)


@pytest.mark.parametrize("name", ["cut.jpg", "cut.png"])
def test_truncated_file_is_an_input_error_naming_it(tmp_path, name):
    whole = write(smooth_pattern(120, 160), tmp_path / f"whole{Path(name).suffix}")
    data = whole.read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) // 2])
    assert image_size(cut) == (160, 120)  # the header is intact: only decoding can tell
    loads = (load_image, lambda p: load_crop(p, None, 32), lambda p: load_crop(p, (0, 0, 40, 20), 8))
    for load in loads:
        with pytest.raises(InputError, match="truncated or corrupt") as err:
            load(cut)
        assert str(err.value).startswith(str(cut))
        assert "\n" not in str(err.value)


def test_garbage_and_missing_files_are_input_errors_naming_them(tmp_path):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all " * 20)
    missing = tmp_path / "missing.jpg"
    for path, problem in ((garbage, "not a readable image"), (missing, "not found")):
        for call in (image_size, load_image, lambda p: load_crop(p, None, 16)):
            with pytest.raises(InputError, match=problem) as err:
                call(path)
            assert err.value.path == path


def test_too_large_image_is_refused_from_its_header(tmp_path):
    # a PNG whose header claims 30000 x 30000 pixels but holds a 40 x 30 image: decoding would fail
    # differently, so the "megapixels" error shows the refusal came from the header alone
    data = bytearray(write(smooth_pattern(30, 40), tmp_path / "small.png").read_bytes())
    data[16:24] = struct.pack(">II", 30000, 30000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bytes(data))
    assert image_size(bomb) == (30000, 30000)
    for load in (load_image, lambda p: load_crop(p, None, 16)):
        with pytest.raises(InputError, match="900.0 megapixels.*limit of 60") as err:
            load(bomb)
        assert err.value.path == bomb


def test_megapixel_limit_is_configurable(tmp_path):
    path = write(smooth_pattern(100, 200), tmp_path / "photo.jpg")  # 0.02 megapixels
    with pytest.raises(InputError, match="megapixels"):
        load_image(path, max_megapixels=0.01)
    with pytest.raises(InputError, match="megapixels"):
        load_crop(path, None, 8, max_megapixels=0.01)
    assert load_image(path, max_megapixels=0.03).shape == (100, 200, 3)


def test_crop_window_has_the_aspect_and_contains_box_plus_margin():
    for box in [(400.0, 300.0, 600.0, 350.0), (450.0, 200.0, 500.0, 400.0)]:  # wide box, tall box
        x0, y0, x1, y1 = crop_window(2000, 1500, box, 0.05)
        assert (x1 - x0) / (y1 - y0) == pytest.approx(2.15)
        bw, bh = box[2] - box[0], box[3] - box[1]
        assert x0 <= box[0] - 0.05 * bw + 1e-9 and x1 >= box[2] + 0.05 * bw - 1e-9
        assert y0 <= box[1] - 0.05 * bh + 1e-9 and y1 >= box[3] + 0.05 * bh - 1e-9
        assert (x0 + x1) / 2 == pytest.approx((box[0] + box[2]) / 2)
        assert (y0 + y1) / 2 == pytest.approx((box[1] + box[3]) / 2)
    # the wide box sets the width exactly: box width plus its margins
    x0, _, x1, _ = crop_window(2000, 1500, (400.0, 300.0, 600.0, 350.0), 0.05)
    assert x1 - x0 == pytest.approx(220.0)


def test_crop_window_is_clipped_to_the_image_and_whole_without_a_box():
    # 100 x 50 box at the bottom-left corner: 118 x 59 with margins, widened to 126.85 x 59 around
    # (50, 175), i.e. x in [-13.4, 113.4] and y in [145.5, 204.5], then clipped
    window = crop_window(300, 200, (0.0, 150.0, 100.0, 200.0), 0.09)
    assert window == pytest.approx((0.0, 145.5, 50 + 0.5 * 2.15 * 59, 200.0))
    x0, y0, x1, y1 = crop_window(300, 200, (-20.0, -10.0, 310.0, 190.0), 0.05)
    assert (x0, y0, x1, y1) == (0.0, 0.0, 300.0, 200.0)
    assert crop_window(300, 200, None, 0.05) == (0.0, 0.0, 300.0, 200.0)


def test_box_outside_or_empty_is_refused():
    outside = [(310.0, 10.0, 400.0, 50.0), (10.0, -50.0, 60.0, 0.0)]
    empty = [(50.0, 50.0, 50.0, 80.0), (np.nan, 0.0, 5.0, 9.0)]
    for box in outside + empty:
        with pytest.raises(ValueError, match="outside|empty"):
            crop_window(300, 200, box, 0.05)


def test_load_crop_with_a_box_outside_the_image_is_an_input_error(tmp_path):
    path = write(smooth_pattern(50, 80), tmp_path / "small.jpg")
    with pytest.raises(InputError, match="outside the 80x50 image") as err:
        load_crop(path, (100, 10, 120, 20), 16)
    assert err.value.path == path


def test_load_crop_shows_the_box_squashed_to_a_square(tmp_path):
    img = np.full((200, 300, 3), 20, np.uint8)
    img[80:120, 100:200] = RED  # the "fluke" fills its 100 x 40 box
    path = write(img, tmp_path / "fluke.png")
    box = (100.0, 80.0, 200.0, 120.0)
    for channels in (1, 3):
        crop = load_crop(path, box, 32, channels=channels)
        assert crop.shape == (32, 32, channels) and crop.dtype == np.uint8
    # margin 0.25: a 150 x 69.8 window (2.15:1), the box spans output columns 5.3-26.7, rows 6.8-25.2
    crop = load_crop(path, box, 32, margin=0.25).astype(int)
    assert np.abs(crop[16, 7:25] - RED).max() < 12 and np.abs(crop[8:24, 16] - RED).max() < 12
    assert np.abs(crop[16, :3] - 20).max() < 5 and np.abs(crop[16, -3:] - 20).max() < 5
    assert np.abs(crop[:4, 16] - 20).max() < 5 and np.abs(crop[-4:, 16] - 20).max() < 5
    assert np.abs(crop - crop[:, ::-1]).max() <= 3  # centred on the box
    assert np.abs(crop - crop[::-1, :]).max() <= 3


def test_jpeg_shrink_picks_the_largest_factor_that_keeps_the_crop_resolution():
    assert jpeg_shrink((0.0, 0.0, 4000.0, 1860.0), 128) == 8
    assert jpeg_shrink((0.0, 0.0, 4000.0, 1860.0), 512) == 2
    assert jpeg_shrink((0.0, 0.0, 4000.0, 1860.0), 1024) == 1
    assert jpeg_shrink((100.0, 100.0, 400.0, 240.0), 64) == 2
    assert jpeg_shrink((0.0, 0.0, 2150.0, 1000.0), (100, 400)) == 2  # each side of a (width, height) size
    assert jpeg_shrink((0.0, 0.0, 4000.0, 1860.0), (512, 100)) == 4


def test_shrink_on_load_gives_nearly_the_full_decode_crop(tmp_path):
    photo = smooth_pattern(1600, 2400)
    path = write(photo, tmp_path / "large.jpg", Q=95)
    box = (500.0, 400.0, 1900.0, 1100.0)
    size = 64
    window = crop_window(2400, 1600, box, 0.05)
    assert jpeg_shrink(window, size) == 8
    x0, y0, x1, y1 = (round(v) for v in window)
    full = load_image(path)[y0:y1, x0:x1]
    expected = cv2.resize(full, (size, size), interpolation=cv2.INTER_AREA).astype(int)
    crop = load_crop(path, box, size).astype(int)
    assert np.abs(crop - expected).mean() < 2.0
    assert np.abs(crop - expected).max() < 16


def test_to_tensor_normalises_per_channel_into_chw_float32():
    img = np.empty((4, 5, 3), np.uint8)
    img[:] = np.round(np.array(MEAN[3]) * 255).astype(np.uint8)
    img[0, 0] = 255
    t = to_tensor(img)
    assert t.shape == (3, 4, 5) and t.dtype == torch.float32
    assert t[:, 1:, :].abs().max() < 0.02  # the mean maps to zero
    expected = (1 - torch.tensor(MEAN[3])) / torch.tensor(STD[3])
    torch.testing.assert_close(t[:, 0, 0], expected)
    grey = to_tensor(np.full((3, 3, 1), 255, np.uint8))
    assert grey.shape == (1, 3, 3)
    torch.testing.assert_close(grey, torch.full((1, 3, 3), (1 - MEAN[1][0]) / STD[1][0]))


def test_bad_channel_count_is_refused(tmp_path):
    path = write(smooth_pattern(20, 30), tmp_path / "x.png")
    with pytest.raises(ValueError, match="channels"):
        load_image(path, channels=2)


def test_real_fluke_photo_decodes_and_crops():
    folder = REAL_FLUKES / "train"
    if not folder.is_dir():
        pytest.skip(f"real photos not available at {folder}")
    path = max(folder.glob("*.jpg"), key=lambda p: p.stat().st_size)  # the largest: shrink-on-load matters
    width, height = image_size(path)
    full = load_image(path)
    assert full.shape == (height, width, 3)
    box = (0.25 * width, 0.3 * height, 0.75 * width, 0.6 * height)
    crop = load_crop(path, box, 96)
    assert crop.shape == (96, 96, 3) and crop.std() > 5
    x0, y0, x1, y1 = (round(v) for v in crop_window(width, height, box, 0.05))
    expected = cv2.resize(full[y0:y1, x0:x1], (96, 96), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(crop.astype(int) - expected).mean() < 6
