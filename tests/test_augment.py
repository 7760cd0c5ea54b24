"""The training augmentation: shapes, seeding, strength, and never a mirror image."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest

from data.augment import train_augment


def asymmetric(size: int, channels: int = 3) -> np.ndarray:
    """A bright left side fading to a dark right side, with a notch on the left only."""
    x = np.linspace(230, 30, size, dtype=np.float32)
    img = np.tile(x, (size, 1))
    img[size // 3 : size // 2, size // 8 : size // 4] = 0
    img = np.dstack([img, 0.8 * img, 0.6 * img][:channels]) if channels == 3 else img[:, :, None]
    return img.astype(np.uint8)


def run(aug, img: np.ndarray, seed: int) -> np.ndarray:
    aug.set_random_seed(seed)
    return aug(image=img)["image"]


@pytest.mark.parametrize("channels", [1, 3])
def test_output_is_a_uint8_crop_of_the_same_size(channels):
    aug = train_augment(48, channels)
    img = asymmetric(48, channels)
    for seed in range(40):
        out = run(aug, img, seed)
        assert out.shape == (48, 48, channels) and out.dtype == np.uint8


def test_input_of_another_size_is_resized_to_size():
    out = run(train_augment(32), asymmetric(50), 0)
    assert out.shape == (32, 32, 3)


def test_same_seed_gives_the_same_image_and_other_seeds_differ():
    aug = train_augment(48)
    img = asymmetric(48)
    first = run(aug, img, 7)
    run(aug, img, 8)  # an unrelated call in between must not matter
    assert np.array_equal(run(aug, img, 7), first)
    assert np.array_equal(run(train_augment(48), img, 7), first)  # nor the instance
    changed = sum(not np.array_equal(run(aug, img, seed), first) for seed in range(20, 30))
    assert changed == 10


def test_strength_zero_leaves_the_crop_unchanged_and_full_strength_changes_most():
    img = asymmetric(40)
    unchanged = train_augment(40, strength=0.0)
    assert all(np.array_equal(run(unchanged, img, seed), img) for seed in range(10))
    full = train_augment(40)
    changed = sum(not np.array_equal(run(full, img, seed), img) for seed in range(30))
    assert changed >= 24  # the affine step alone has p = 0.9


def test_augmentation_never_mirrors_the_fluke():
    img = asymmetric(64)
    mirror = img[:, ::-1]
    aug = train_augment(64)
    for seed in range(60):
        out = cv2.cvtColor(run(aug, img, seed), cv2.COLOR_RGB2GRAY).astype(float)
        to_self = np.abs(out - cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)).mean()
        to_mirror = np.abs(out - cv2.cvtColor(mirror, cv2.COLOR_RGB2GRAY)).mean()
        assert to_self < to_mirror, f"seed {seed}: the augmented crop looks mirrored"


def test_building_and_applying_raises_no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for channels in (1, 3):
            aug = train_augment(32, channels, strength=1.5)
            for seed in range(30):
                run(aug, asymmetric(32, channels), seed)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="channels"):
        train_augment(32, channels=2)
    with pytest.raises(ValueError, match="strength"):
        train_augment(32, strength=-1)
