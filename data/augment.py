"""Training augmentation, ported from the 5th place's list to albumentations 2.0.

Box-aware in two steps: the dataset first takes the crop around the fluke box with a random margin
(0.01-0.09 of the box size, :func:`data.images.load_crop`), then these transforms act on that
``size`` x ``size`` crop. Differences from the 5th place: they augmented the whole photo and tracked
the box, so their rotation acted before the 2.15:1 squash and ours acts after it; their flips and
90-degree turns (p=0.001) are dropped, since a mirrored fluke is another whale.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402

AUGMENTS = ("fluke", "affine")


def affine_augment(size: int, strength: float = 1.0) -> A.Compose:
    """Koch et al.'s (2015) distortions for handwritten characters: rotation up to 10 degrees, shear up to 0.3
    (about 17 degrees), scale 0.8-1.2 and a shift of up to 2 pixels at 105 px, each applied with probability 0.5;
    ``strength`` scales the ranges. The border is filled with white (the paper's background)."""
    s = strength
    shift = 2.0 / 105.0 * s
    steps: list[A.BasicTransform] = [A.Resize(size, size, interpolation=cv2.INTER_AREA)]
    if s > 0:
        fill = {"border_mode": cv2.BORDER_CONSTANT, "fill": 255}
        steps += [A.Affine(rotate=(-10 * s, 10 * s), p=0.5, **fill),
                  A.Affine(shear=(-17 * s, 17 * s), p=0.5, **fill),
                  A.Affine(scale=(1 - 0.2 * s, 1 + 0.2 * s), p=0.5, **fill),
                  A.Affine(translate_percent=(-shift, shift), p=0.5, **fill)]
    return A.Compose(steps)


def make_augment(kind: str, size: int, channels: int = 3, strength: float = 1.0) -> A.Compose:
    """The training transform ``kind`` (``train.augment``): ``fluke`` (:func:`train_augment`, the 5th place's list)
    or ``affine`` (:func:`affine_augment`, Koch's distortions for characters)."""
    if kind == "affine":
        return affine_augment(size, strength)
    if kind == "fluke":
        return train_augment(size, channels, strength)
    raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, not {kind!r}")


def train_augment(size: int, channels: int = 3, strength: float = 1.0) -> A.Compose:
    """The training transform for uint8 ``[size, size, channels]`` crops.

    ``strength`` scales the shift, scale and rotation ranges and the probability of each photometric
    step (1.0 is the 5th place's setting, 0.0 leaves the crop unchanged). Colour steps (RGB shift,
    hue/saturation, to-grey) are left out for 1-channel images. Seed it per sample with
    ``set_random_seed`` for reproducible output.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    if strength < 0:
        raise ValueError(f"strength must be >= 0, not {strength}")

    def p(base: float) -> float:
        return min(1.0, base * strength)

    steps: list[A.BasicTransform | A.BaseCompose] = [A.Resize(size, size, interpolation=cv2.INTER_AREA)]
    if strength == 0:
        return A.Compose(steps)
    steps += [
        A.OneOf([A.GaussNoise(std_range=(0.01, 0.05)), A.GaussNoise(std_range=(0.012, 0.028))], p=p(0.1)),
        A.OneOf([A.MotionBlur(p=0.5), A.MedianBlur(blur_limit=3, p=0.5), A.Blur(blur_limit=3, p=0.5)], p=p(0.1)),
        A.Affine(
            translate_percent=(-0.02 * strength, 0.02 * strength),
            scale=(1 - 0.05 * strength, 1 + 0.05 * strength),
            rotate=(-20 * strength, 20 * strength),
            border_mode=cv2.BORDER_REFLECT_101,
            p=0.9,
        ),
        A.OneOf([A.CLAHE(clip_limit=2), A.Sharpen(), A.Emboss()], p=p(0.1)),
    ]
    if channels == 3:
        rgb_shift = A.RGBShift(r_shift_limit=20, g_shift_limit=20, b_shift_limit=20, p=1.0)
        steps.append(A.OneOf([rgb_shift, A.HueSaturationValue(p=1.0)], p=p(0.5)))
    steps.append(A.ImageCompression(quality_range=(55, 99), p=p(0.2)))
    if channels == 3:
        steps.append(A.ToGray(num_output_channels=3, p=p(0.05)))
    return A.Compose(steps)
