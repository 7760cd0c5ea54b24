"""One synthetic humpback individual: its fluke silhouette and its underside pattern, in a canonical frame.

The canonical frame has the fluke seen from behind, underside towards the camera: x runs from the left
tip (-1) to the right tip (+1), y points up, the notch sits near (0, 0.05) and the tail stock runs down
to y = -0.95. Left and right lobes get independent random parameters, so an individual and its mirror
image are different animals.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

X_RANGE = (-1.1, 1.1)
Y_RANGE = (-0.95, 0.7)
STOCK_BOTTOM = -0.95


@dataclass(frozen=True)
class FlukeLook:
    """Canonical appearance of one individual (textures are ``float32`` arrays of the same shape)."""

    alpha: np.ndarray  # coverage of the fluke, 0..1, anti-aliased edges
    white: np.ndarray  # underside pigmentation, 0 black .. 1 white
    outline: np.ndarray  # (N, 2) polygon in canonical units

    @property
    def shape(self) -> tuple[int, int]:
        return self.alpha.shape  # type: ignore[return-value]

    def mirrored(self) -> FlukeLook:
        """The left-right mirror image: a different individual under this catalog's rules."""
        outline = self.outline * np.array([-1.0, 1.0])
        return FlukeLook(self.alpha[:, ::-1].copy(), self.white[:, ::-1].copy(), outline[::-1].copy())


def texture_shape(width: int) -> tuple[int, int]:
    """(height, width) of a canonical texture ``width`` pixels wide."""
    height = round(width * (Y_RANGE[1] - Y_RANGE[0]) / (X_RANGE[1] - X_RANGE[0]))
    return height, width


def canonical_to_pixel(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Canonical (x, y-up) points -> texture pixel coordinates (column, row)."""
    h, w = shape
    px = (points[:, 0] - X_RANGE[0]) / (X_RANGE[1] - X_RANGE[0]) * w
    py = (Y_RANGE[1] - points[:, 1]) / (Y_RANGE[1] - Y_RANGE[0]) * h
    return np.stack([px, py], axis=1)


def _smooth_field(rng: np.random.Generator, grid: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """A smooth random field: a coarse normal grid upsampled with cubic interpolation, unit std."""
    coarse = rng.standard_normal(grid).astype(np.float32)
    field = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / (field.std() + 1e-6)


def _trailing_edge(rng: np.random.Generator, u: np.ndarray, tip_y: float, notch_y: float) -> np.ndarray:
    """Height of one lobe's trailing edge at |x| = u: base curve, broad waves, nicks and fine serration."""
    bulge = rng.uniform(0.1, 0.22)
    base = notch_y + (tip_y - notch_y) * u ** rng.uniform(0.8, 1.3) + bulge * np.sin(np.pi * u) * (1 - u) ** 0.3
    waves = np.zeros_like(u)
    for _ in range(rng.integers(2, 5)):
        wavelength = rng.uniform(0.12, 0.45)
        waves += rng.uniform(0.004, 0.018) * np.sin(2 * np.pi * u / wavelength + rng.uniform(0, 2 * np.pi))
    nicks = np.zeros_like(u)
    for _ in range(rng.poisson(1.6)):
        centre, width, depth = rng.uniform(0.12, 0.92), rng.uniform(0.025, 0.09), rng.uniform(0.035, 0.11)
        if rng.random() < 0.35:  # a V-shaped bite
            bite = np.clip(1 - np.abs(u - centre) / width, 0, None)
        else:  # a rounded scoop
            bite = np.exp(-(((u - centre) / (0.6 * width)) ** 2))
        nicks = np.maximum(nicks, depth * bite)
    period = rng.uniform(0.015, 0.035)
    serration = rng.uniform(0.002, 0.008) * np.abs(np.sin(np.pi * u / period + rng.uniform(0, np.pi)))
    edge = base + (waves - waves[0]) * np.clip(u / 0.1, 0, 1) - nicks - serration
    return edge


def _lobe(rng: np.random.Generator, side: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Leading edge (root -> tip) and trailing edge (tip -> notch) of one lobe, canonical units."""
    tip_y = rng.uniform(0.18, 0.45)
    notch_y = rng.uniform(0.06, 0.14)
    span = rng.uniform(0.93, 1.0)
    t = np.linspace(0, 1, n)
    root_x, root_y = rng.uniform(0.06, 0.09), rng.uniform(-0.4, -0.3)
    lead_x = root_x + (span - root_x) * t
    lead_y = (root_y + (tip_y - root_y) * t ** rng.uniform(1.1, 1.7)
              - rng.uniform(0.0, 0.08) * np.sin(np.pi * t) * (1 - t))
    u = np.linspace(span, 0, n) / span
    trail_y = _trailing_edge(rng, u, tip_y, notch_y)
    notch_depth, notch_w = rng.uniform(0.03, 0.08), rng.uniform(0.03, 0.06)
    trail_y = trail_y - notch_depth * np.exp(-((u / notch_w) ** 2))
    trail_y[0] = min(trail_y[0], tip_y)
    lead = np.stack([side * lead_x, lead_y], axis=1)
    trail = np.stack([side * u * span, trail_y], axis=1)
    return lead, trail


def fluke_outline(rng: np.random.Generator, n: int = 240) -> np.ndarray:
    """Closed polygon of a fluke with its tail stock: stock, left lobe, notch, right lobe, stock."""
    stock = rng.uniform(0.15, 0.2)
    left_lead, left_trail = _lobe(rng, -1, n)
    right_lead, right_trail = _lobe(rng, +1, n)
    notch_x = rng.uniform(-0.015, 0.015)
    left_trail[-1, 0] = right_trail[-1, 0] = notch_x
    return np.concatenate([
        [[-stock, STOCK_BOTTOM]], left_lead, left_trail, right_trail[::-1][1:], right_lead[::-1],
        [[stock, STOCK_BOTTOM]],
    ])


def _pigmentation(rng: np.random.Generator, alpha: np.ndarray, scale: float) -> np.ndarray:
    """Bold black-and-white patch layout plus a margin, spots and scars; 0 black .. 1 white."""
    shape = alpha.shape
    inside = alpha > 0.5
    h, w = shape
    kind = rng.random()
    if kind < 0.1:
        white_share = rng.uniform(0.05, 0.15)
    elif kind < 0.7:
        white_share = rng.uniform(0.2, 0.6)
    else:
        white_share = rng.uniform(0.6, 0.9)
    yy = np.linspace(Y_RANGE[1], Y_RANGE[0], h, dtype=np.float32)[:, None]
    xx = np.linspace(X_RANGE[0], X_RANGE[1], w, dtype=np.float32)[None, :]
    lobe_centre = np.exp(-(((np.abs(xx) - 0.5) / 0.35) ** 2) - ((yy - 0.05) / 0.35) ** 2)
    field = (0.7 * _smooth_field(rng, (5, 8), shape) + 0.8 * _smooth_field(rng, (9, 15), shape)
             + rng.uniform(0.5, 1.5) * lobe_centre - 4 * np.clip((-0.2 - yy) / 0.15, 0, None))
    level = np.quantile(field[inside], 1 - white_share)
    white = (field > level).astype(np.float32)
    if rng.random() < 0.7:  # black margin along the edges
        dist = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, 5)
        white[dist < rng.uniform(0.01, 0.05) * w] = 0
    px = w / (X_RANGE[1] - X_RANGE[0])
    lobes = np.flatnonzero((inside & (yy > -0.15)).ravel())
    for _ in range(1 + rng.poisson(4)):  # spots on the lobes, the opposite colour of where they land
        cy, cx = divmod(int(lobes[rng.integers(len(lobes))]), w)
        r = max(1, int(rng.uniform(0.025, 0.065) * px))
        value = 0.0 if white[cy, cx] > 0.5 else 1.0
        cv2.ellipse(white, (cx, cy), (r, max(1, int(r * rng.uniform(0.5, 1)))),
                    rng.uniform(0, 180), 0, 360, value, -1, cv2.LINE_AA)
    for _ in range(rng.poisson(2.5)):  # scars and rake marks: white curves, sometimes in parallel sets
        start = np.array([rng.uniform(-0.9, 0.9), rng.uniform(-0.2, 0.4)])
        direction = rng.normal(size=2)
        direction /= np.linalg.norm(direction)
        length = rng.uniform(0.12, 0.4)
        bend = rng.normal(0, 0.05, size=2)
        offset = np.array([-direction[1], direction[0]]) * rng.uniform(0.05, 0.09)
        thickness = max(1, int(rng.uniform(0.014, 0.028) * px))
        for k in range(1 if rng.random() < 0.6 else rng.integers(2, 5)):
            s = np.linspace(0, 1, 12)[:, None]
            pts = start + k * offset + s * length * direction + 4 * s * (1 - s) * bend
            pix = canonical_to_pixel(pts, shape)
            cv2.polylines(white, [np.round(pix * 16).astype(np.int32)], False, 1.0, thickness,
                          cv2.LINE_AA, shift=4)
    white = cv2.GaussianBlur(white, (0, 0), max(0.5, scale))
    return np.clip(white, 0, 1) * (alpha > 0.02)


def make_fluke(rng: np.random.Generator, width: int = 320) -> FlukeLook:
    """Draw a new individual: silhouette and pigmentation on a canonical texture ``width`` pixels wide."""
    shape = texture_shape(width)
    outline = fluke_outline(rng)
    alpha = np.zeros(shape, np.float32)
    pix = np.round(canonical_to_pixel(outline, shape) * 16).astype(np.int32)
    cv2.fillPoly(alpha, [pix], 1.0, cv2.LINE_AA, shift=4)
    white = _pigmentation(rng, alpha, width / 320)
    return FlukeLook(alpha, white.astype(np.float32), outline)
