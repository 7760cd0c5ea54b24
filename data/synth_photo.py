"""One synthetic photo of a fluke: sea and sky, a posed and lit fluke, splashes, camera effects, JPEG.

``difficulty`` scales every nuisance (pose range, lighting, occlusion, blur, noise, compression);
1.0 is the default catalog, 0 gives clean frontal photos, values above 1 harder ones.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from data.synth_fluke import X_RANGE, Y_RANGE, FlukeLook


def _noise(rng: np.random.Generator, grid: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Smooth noise of about unit std: a coarse normal grid upsampled to ``shape`` (anisotropic when grids differ)."""
    coarse = rng.standard_normal((max(2, grid[0]), max(2, grid[1])), dtype=np.float32)
    coarse = (coarse - coarse.mean()) / (coarse.std() + 1e-6)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


SEA_TINTS = np.array([[0.8, 0.95, 1.15], [0.82, 1.02, 1.08], [0.9, 1.0, 1.02], [1.0, 1.0, 1.0]], np.float32)


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Sea with waves, chop and glints, sometimes sky above a tilted horizon; RGB float32 0..1."""
    shape = (height, width)
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :]
    horizon = rng.uniform(0.03, 0.3) * height if rng.random() < 0.4 else -1.0
    level = horizon + (cols - width / 2) * math.tan(math.radians(rng.normal(0, 2)))
    depth = np.clip((rows - level) / height, 0, 1)  # 0 at the horizon, larger nearer the camera
    tint = SEA_TINTS[rng.integers(len(SEA_TINTS))] * rng.uniform(0.3, 1.0)
    sea_rgb = rng.uniform(0.15, 0.55) * (1 + tint - tint.mean())
    gradient = 1 + rng.uniform(0.0, 0.5) * (1 - depth) - 0.2 * depth
    stretch = rng.uniform(2, 5)
    waves = (_noise(rng, (int(height / 14), int(width / 14 / stretch)), shape)
             + 0.6 * _noise(rng, (int(height / 6), int(width / 6 / stretch)), shape)
             + 0.4 * _noise(rng, (int(height / 3), int(width / 3 / stretch)), shape)
             + 0.25 * _noise(rng, (int(height / 1.5), int(width / 1.5 / stretch)), shape))
    amplitude = rng.uniform(0.08, 0.22)
    sea = sea_rgb[None, None, :] * (gradient * (1 + amplitude * waves))[:, :, None]
    glint = np.clip(waves - rng.uniform(1.6, 2.6), 0, None) * rng.uniform(0.1, 0.4)
    sea = sea + glint[:, :, None]
    if horizon < 0:
        return np.clip(sea, 0, 1)
    sky_rgb = rng.uniform(0.6, 0.9) * np.array([0.95, 0.98, 1.03], np.float32)
    clouds = 1 + 0.06 * _noise(rng, (4, 6), shape)
    sky = sky_rgb[None, None, :] * (clouds * (1 - 0.3 * np.clip((level - rows) / height, 0, 1)))[:, :, None]
    blend = np.clip(rows - level + 0.5, 0, 1)[:, :, None]
    return np.clip(sky * (1 - blend) + sea * blend, 0, 1)


def _pose_matrix(yaw: float, pitch: float, roll: float, distance: float) -> np.ndarray:
    """Homography from the canonical fluke plane (x, y up) to image units (x right, y down) at unit scale."""
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    rot = rz @ rx @ ry
    plane = np.column_stack([rot[:, 0], rot[:, 1], [0, 0, distance]])
    project = np.diag([distance, -distance, 1.0])  # focal length = distance: unit scale at the origin
    return project @ plane


def _apply(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    pts = np.column_stack([points, np.ones(len(points))]) @ h.T
    return pts[:, :2] / pts[:, 2:3]


def _texture_to_canonical(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    sx = (X_RANGE[1] - X_RANGE[0]) / w
    sy = (Y_RANGE[1] - Y_RANGE[0]) / h
    return np.array([[sx, 0, X_RANGE[0] + 0.5 * sx], [0, -sy, Y_RANGE[1] - 0.5 * sy], [0, 0, 1]])


def _bend(rng: np.random.Generator, look: FlukeLook, difficulty: float
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flex each lobe up or down a little (a real fluke is not rigid): bent alpha, white and outline."""
    h, w = look.shape
    left, right = rng.normal(0, 0.12 * difficulty, 2)

    def lift(x: np.ndarray) -> np.ndarray:
        return np.where(x < 0, left, right) * x**2

    xs = np.linspace(X_RANGE[0], X_RANGE[1], w, dtype=np.float32)
    shift_px = (lift(xs) / (Y_RANGE[1] - Y_RANGE[0]) * h).astype(np.float32)
    map_x = np.broadcast_to(np.arange(w, dtype=np.float32)[None, :], (h, w)).copy()
    map_y = np.arange(h, dtype=np.float32)[:, None] + shift_px[None, :]
    alpha = cv2.remap(look.alpha, map_x, map_y, cv2.INTER_LINEAR, borderValue=0)
    white = cv2.remap(look.white, map_x, map_y, cv2.INTER_LINEAR, borderValue=0)
    outline = look.outline + np.column_stack([np.zeros(len(look.outline)), lift(look.outline[:, 0])])
    return alpha, white, outline


def _splash(rng: np.random.Generator, img: np.ndarray, centre: tuple[float, float],
            radii: tuple[float, float], density: float) -> None:
    """Paint a foamy splash (broken-up whitewater inside a soft ellipse) onto ``img`` in place."""
    h, w = img.shape[:2]
    rx, ry = max(radii[0], 2.0), max(radii[1], 2.0)
    x0, x1 = max(0, int(centre[0] - 1.3 * rx)), min(w, int(centre[0] + 1.3 * rx) + 1)
    y0, y1 = max(0, int(centre[1] - 1.3 * ry)), min(h, int(centre[1] + 1.3 * ry) + 1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    shape = (y1 - y0, x1 - x0)
    rows = (np.arange(y0, y1, dtype=np.float32)[:, None] - centre[1]) / ry
    cols = (np.arange(x0, x1, dtype=np.float32)[None, :] - centre[0]) / rx
    envelope = np.clip(1.3 - np.sqrt(rows**2 + cols**2), 0, 1)
    unit = max(1.0, img.shape[1] / 320)
    foam = (_noise(rng, (int(shape[0] / 5 / unit), int(shape[1] / 5 / unit)), shape)
            + 0.7 * _noise(rng, (int(shape[0] / 2 / unit), int(shape[1] / 2 / unit)), shape))
    alpha = np.clip((0.5 * foam + 2.6 * envelope - 1.7 + density) * 1.5, 0, 1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 0.7)[:, :, None]
    tone = (rng.uniform(0.8, 1.0) + 0.08 * _noise(rng, (4, 4), shape))[:, :, None]
    foam_rgb = np.array([0.9, 0.94, 0.97], np.float32) * tone
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - alpha) + foam_rgb * alpha


def _place(rng: np.random.Generator, outline: np.ndarray, waterline: float, width: int, height: int,
           d: float) -> tuple[np.ndarray, np.ndarray]:
    """Pose (yaw, pitch, roll, perspective) and framing: canonical -> photo homography for the visible part."""
    yaw = math.radians(rng.uniform(-35, 35) * d)
    pitch = math.radians(rng.uniform(-35, 20) * d)
    roll = math.radians(float(np.clip(rng.normal(0, 12), -28, 28)) * d)
    pose = _pose_matrix(yaw, pitch, roll, rng.uniform(2.5, 6.0))
    above = np.column_stack([outline[:, 0], np.maximum(outline[:, 1], waterline)])  # a bound of the visible part
    corners = _apply(pose, above)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    size = hi - lo
    scale = min(rng.uniform(0.5, 0.88) * width / size[0], 0.9 * height / size[1], 0.96 * width / size[0])
    box_w, box_h = size * scale
    left = rng.uniform(0.02 * width, width - box_w - 0.02 * width)
    top = rng.uniform(0.03 * height, height - box_h - 0.03 * height)
    place = np.array([[scale, 0, left - lo[0] * scale], [0, scale, top - lo[1] * scale], [0, 0, 1]])
    return place @ pose, _apply(place @ pose, np.array([[0.0, waterline]]))[0]


def _paint_fluke(rng: np.random.Generator, img: np.ndarray, a: np.ndarray, wh: np.ndarray, d: float
                 ) -> np.ndarray:
    """Composite the fluke: black and white skin tones, a lighting ramp, mottling and wet sheen."""
    height, width = a.shape
    dark = rng.uniform(0.03, 0.13) * (1 + rng.normal(0, 0.05, 3)).astype(np.float32)
    light = rng.uniform(0.65, 0.93) * (1 + rng.normal(0, 0.025, 3)).astype(np.float32)
    fluke = dark[None, None, :] + (light - dark)[None, None, :] * wh[:, :, None]
    angle = rng.uniform(0, 2 * math.pi)
    rows = np.arange(height, dtype=np.float32)[:, None] - height / 2
    cols = np.arange(width, dtype=np.float32)[None, :] - width / 2
    ramp = (cols * math.cos(angle) + rows * math.sin(angle)) / width
    shade = 1 + rng.uniform(0, 0.7) * d * ramp + 0.04 * _noise(rng, (height // 4, width // 4), (height, width))
    fluke = fluke * shade[:, :, None]
    if rng.random() < 0.6:  # sheen of wet skin reflecting the sky
        cell = rng.uniform(8, 20) * width / 320
        sheen = np.clip(_noise(rng, (int(height / cell), int(width / cell)), (height, width)) - rng.uniform(0, 1), 0, 1)
        sheen = (sheen * rng.uniform(0, 0.35) * min(d, 2.0))[:, :, None]
        fluke = fluke * (1 - sheen) + np.float32(rng.uniform(0.5, 0.9)) * sheen
    return img * (1 - a[:, :, None]) + fluke * a[:, :, None]


def render_photo(look: FlukeLook, rng: np.random.Generator, width: int = 320, height: int = 200,
                 difficulty: float = 1.0) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A photo of ``look`` (RGB uint8, height x width) and the fluke's true box (x0, y0, x1, y1), pascal_voc.

    The box bounds the fluke above the waterline, in pixels, whether or not splashes hide parts of it.
    """
    d = float(difficulty)
    img = background(rng, height, width)
    alpha, white, outline = _bend(rng, look, d)
    waterline = rng.uniform(-0.85, -0.2)
    ys = np.linspace(Y_RANGE[1], Y_RANGE[0], look.shape[0], dtype=np.float32)[:, None]
    ripple = 0.02 * _noise(rng, (2, 12), (1, look.shape[1]))
    alpha = alpha * np.clip((ys - waterline - ripple) / 0.03, 0, 1)
    to_photo, base = _place(rng, outline, waterline, width, height, d)
    homography = to_photo @ _texture_to_canonical(look.shape)
    warp = dict(dsize=(width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    a = cv2.warpPerspective(alpha, homography, **warp)
    wh = cv2.warpPerspective(white, homography, **warp)
    box = _box(a)
    img = _paint_fluke(rng, img, a, wh, d)
    img = _water(rng, img.astype(np.float32), a, box, (float(base[0]), float(base[1])), d)
    return _camera(rng, img, d), box


def _box(alpha: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(alpha > 0.5)
    if len(xs) == 0:
        raise ValueError("the fluke fell outside the photo")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _water(rng: np.random.Generator, img: np.ndarray, a: np.ndarray, box: tuple[int, int, int, int],
           base: tuple[float, float], d: float) -> np.ndarray:
    """Foam where the stock leaves the water, water pouring off the trailing edge, splashes over the fluke."""
    h, w = a.shape
    x0, y0, x1, y1 = box
    bw = x1 - x0
    if rng.random() < 0.5 * min(d, 1.5):  # sheets of water running off the trailing edge
        streaks = np.clip(_noise(rng, (3, int(w / 3)), (h, w)) - 1.2, 0, None)
        below = np.clip((np.arange(h, dtype=np.float32)[:, None] - y0 - 0.1 * (y1 - y0)) / max(1, y1 - y0), 0, 1)
        sheet = np.clip(streaks * below * (a > 0.5) * rng.uniform(0.3, 0.8), 0, 0.8)[:, :, None]
        img = img * (1 - sheet) + np.float32(0.85) * sheet
    _splash(rng, img, base, (rng.uniform(0.15, 0.5) * bw, rng.uniform(0.04, 0.12) * bw), rng.uniform(0.0, 0.8))
    for _ in range(rng.poisson(0.6 * d)):  # splashes in front of the fluke
        centre = (rng.uniform(x0, x1), rng.uniform(y0 + 0.3 * (y1 - y0), y1))
        radii = (rng.uniform(0.06, 0.2) * bw, rng.uniform(0.04, 0.15) * bw)
        _splash(rng, img, centre, radii, rng.uniform(0, 0.6))
    return img


def _camera(rng: np.random.Generator, img: np.ndarray, d: float) -> np.ndarray:
    """Exposure, gamma, contrast, colour cast or greyscale, blur and sensor noise; returns RGB uint8."""
    img = img * rng.uniform(1 - 0.25 * d, 1 + 0.25 * d)
    img = cv2.pow(np.clip(img, 0, 1), rng.uniform(1 - 0.25 * d, 1 + 0.3 * d))
    mean = img.mean()
    img = mean + (img - mean) * rng.uniform(1 - 0.25 * d, 1 + 0.2 * d)
    if rng.random() < 0.3:
        img = np.repeat(img.mean(axis=2, keepdims=True), 3, axis=2)
    else:
        img = img * (1 + rng.normal(0, 0.035 * d, 3)).astype(np.float32)[None, None, :]
    sigma = rng.uniform(0, 0.9 * d) * img.shape[1] / 320
    if sigma > 0.3:
        img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigma)
    grain = rng.random((*img.shape[:2], 1), dtype=np.float32) - np.float32(0.5)
    img = img + grain * np.float32(rng.uniform(0, 0.09 * d))  # uniform noise of std up to 0.026
    return cv2.convertScaleAbs(np.clip(img, 0, 1), alpha=255)


def encode_jpeg(rgb: np.ndarray, rng: np.random.Generator, difficulty: float = 1.0) -> bytes:
    """JPEG bytes of an RGB photo at a random quality (lower when ``difficulty`` is higher)."""
    low = int(np.clip(95 - 45 * difficulty, 20, 95))
    quality = int(rng.integers(low, 96))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()
