"""Datasets and loaders: test-mode crops, deterministic training randomness, pairs, workers."""

from __future__ import annotations

import numpy as np
import pytest
import pyvips
import torch

import data.datasets as datasets
from data.datasets import EpochShuffle, ImageDataset, PairDataset, make_loader
from data.images import load_crop, to_tensor

SIZE = 24


@pytest.fixture
def photos(tmp_path):
    """Six small JPEGs of different patterns, with boxes (two of them without)."""
    rng = np.random.default_rng(0)
    paths, boxes = [], []
    for i in range(6):
        h, w = 40 + 4 * i, 70 + 6 * i
        y, x = np.mgrid[0:h, 0:w]
        base = rng.uniform(0.02, 0.2, 3)
        img = 127 + 100 * np.sin(x[..., None] * base + y[..., None] * base[::-1] + i)
        path = tmp_path / f"p{i}.jpg"
        pyvips.Image.new_from_array(img.astype(np.uint8)).write_to_file(str(path))
        paths.append(path)
        boxes.append(None if i % 3 == 0 else (5.0 + i, 4.0, w - 10.0, h - 6.0 - i))
    return paths, boxes


def test_test_mode_gives_the_margin_005_crop_normalised(photos):
    paths, boxes = photos
    ds = ImageDataset(paths, boxes, SIZE)
    assert len(ds) == 6
    for i in (0, 1):
        item = ds[i]
        assert item.shape == (3, SIZE, SIZE) and item.dtype == torch.float32
        torch.testing.assert_close(item, to_tensor(load_crop(paths[i], boxes[i], SIZE, margin=0.05)))
    ds.set_epoch(3)
    torch.testing.assert_close(ds[1], to_tensor(load_crop(paths[1], boxes[1], SIZE)))


def test_one_channel_items(photos):
    paths, boxes = photos
    assert ImageDataset(paths, boxes, SIZE, channels=1)[2].shape == (1, SIZE, SIZE)
    assert ImageDataset(paths, boxes, SIZE, channels=1, train=True)[2].shape == (1, SIZE, SIZE)


def test_train_items_depend_only_on_seed_epoch_and_index(photos):
    paths, boxes = photos
    a = ImageDataset(paths, boxes, SIZE, train=True, seed=5)
    b = ImageDataset(paths, boxes, SIZE, train=True, seed=5)
    first = a[4]
    for i in (0, 1, 2, 3):  # other items in between: no shared random state
        b[i]
    assert torch.equal(b[4], first)
    assert torch.equal(a[4], first)
    a.set_epoch(1)
    assert not torch.equal(a[4], first)
    a.set_epoch(0)
    assert torch.equal(a[4], first)
    assert not torch.equal(ImageDataset(paths, boxes, SIZE, train=True, seed=6)[4], first)
    assert not torch.equal(a.get(4, draw=1), first)


def test_augment_strength_zero_leaves_only_the_random_margin(photos, monkeypatch):
    paths, boxes = photos
    margins = []
    real = datasets.load_crop

    def spy(path, box, size, margin, **kw):
        margins.append(margin)
        return real(path, box, size, margin=margin, **kw)

    monkeypatch.setattr(datasets, "load_crop", spy)
    plain = ImageDataset(paths, boxes, SIZE, train=True, seed=2, augment_strength=0.0)
    item = plain[1]
    torch.testing.assert_close(item, to_tensor(real(paths[1], boxes[1], SIZE, margin=margins[-1])))
    assert not torch.equal(ImageDataset(paths, boxes, SIZE, train=True, seed=2)[1], item)


def test_train_margin_varies_between_epochs_around_the_box(photos, monkeypatch):
    paths, boxes = photos
    margins = []

    def spy(path, box, size, *, margin, **options):
        margins.append(margin)
        return load_crop(path, box, size, margin=margin, **options)

    monkeypatch.setattr(datasets, "load_crop", spy)
    ds = ImageDataset(paths, boxes, SIZE, train=True)
    for epoch in range(20):
        ds.set_epoch(epoch)
        ds[1]
    assert all(0.01 <= m <= 0.09 for m in margins)
    assert len(set(margins)) == 20 and max(margins) - min(margins) > 0.04


def test_missing_box_rows_mean_the_whole_image(photos):
    paths, _ = photos
    nan_box = ImageDataset(paths[:1], [(np.nan, np.nan, np.nan, np.nan)], SIZE)
    assert nan_box.boxes == [None]
    torch.testing.assert_close(nan_box[0], ImageDataset(paths[:1], [None], SIZE)[0])
    with pytest.raises(ValueError, match="boxes"):
        ImageDataset(paths, [None], SIZE)


def test_pair_dataset_returns_both_crops_and_a_float_target(photos):
    paths, boxes = photos
    images = ImageDataset(paths, boxes, SIZE)
    pairs = PairDataset(images, np.array([[0, 1], [2, 5], [3, 3]]), np.array([1, 0, 1]))
    assert len(pairs) == 3
    a, b, y = pairs[1]
    torch.testing.assert_close(a, images[2])
    torch.testing.assert_close(b, images[5])
    assert y.dtype == torch.float32 and y.shape == () and y.item() == 0.0
    assert pairs[0][2].item() == 1.0


def test_training_pairs_get_independent_views_reproducibly(photos):
    paths, boxes = photos
    images = ImageDataset(paths, boxes, SIZE, train=True, seed=1)
    pairs = PairDataset(images, np.array([[3, 3], [3, 4]]), np.zeros(2))
    a, b, _ = pairs[0]
    assert not torch.equal(a, b)  # the same photo twice, two random views
    assert not torch.equal(pairs[1][0], a)  # the same photo in another pair
    assert torch.equal(pairs[0][0], a)
    pairs.set_epoch(2)
    assert images.epoch == 2 and not torch.equal(pairs[0][0], a)


def test_pair_dataset_refuses_bad_pairs(photos):
    paths, boxes = photos
    images = ImageDataset(paths, boxes, SIZE)
    with pytest.raises(ValueError, match="shape"):
        PairDataset(images, np.array([0, 1, 2]), np.zeros(3))
    with pytest.raises(ValueError, match="targets"):
        PairDataset(images, np.array([[0, 1]]), np.zeros(2))
    with pytest.raises(ValueError, match="indices"):
        PairDataset(images, np.array([[0, 6]]), np.zeros(1))


def test_epoch_shuffle_is_a_function_of_seed_and_epoch(photos):
    paths, boxes = photos
    ds = ImageDataset(paths * 4, boxes * 4, SIZE)
    first = list(EpochShuffle(ds, seed=3))
    assert sorted(first) == list(range(24))
    assert list(EpochShuffle(ds, seed=3)) == first
    ds.set_epoch(1)
    second = list(EpochShuffle(ds, seed=3))
    assert second != first
    ds.set_epoch(0)
    assert list(EpochShuffle(ds, seed=3)) == first
    assert list(EpochShuffle(ds, seed=4)) != first


def batches(loader, epochs: int) -> list[list[torch.Tensor]]:
    out = []
    for epoch in range(epochs):
        loader.dataset.set_epoch(epoch)
        out.append([torch.cat([a.flatten(), b.flatten(), y.flatten()]) for a, b, y in loader])
    return out


def test_two_workers_give_the_same_batches_as_none_across_epochs(photos):
    paths, boxes = photos
    pyvips.Image.new_from_file(str(paths[0])).avg()  # libvips already busy in the parent before forking
    images = ImageDataset(paths, boxes, 16, train=True, seed=2)
    pairs = PairDataset(images, np.array([[0, 1], [2, 3], [4, 5], [1, 4]]), np.array([1, 0, 0, 1]))
    serial = batches(make_loader(pairs, 2, shuffle=True, seed=9, workers=0), epochs=2)
    parallel_loader = make_loader(pairs, 2, shuffle=True, seed=9, workers=2)
    assert parallel_loader.persistent_workers
    parallel = batches(parallel_loader, epochs=2)  # epoch 1 reaches the persistent workers
    assert len(serial[0]) == 2
    for s_epoch, p_epoch in zip(serial, parallel, strict=True):
        for s, p in zip(s_epoch, p_epoch, strict=True):
            assert torch.equal(s, p)
    assert not torch.equal(serial[0][0], serial[1][0])


def test_loader_defaults(photos, monkeypatch):
    paths, boxes = photos
    loader = make_loader(ImageDataset(paths, boxes, SIZE), 4, drop_last=True)
    assert len(loader) == 1 and loader.generator is not None
    assert loader.pin_memory == torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert datasets.default_workers() == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert 1 <= datasets.default_workers() <= 8
