"""The one cache (data/cache.py) behind branch features and keypoints: reused while photos, boxes and settings
hold; a new box, a replaced photo or a truncated cache file means a recomputation, never a traceback."""

from __future__ import annotations

import numpy as np
import torch

import matching.runs.run as pipeline
from data.cache import cache_key, read_cache
from data.catalog import load_catalog
from data.checkpoint import save_checkpoint
from data.io import save_npz
from siamese.model import build_model

MODEL = {"name": "tiny", "branch": "test_efficientnet", "in_chans": 3, "pool": "max", "pretrained": False,
         "weights": None, "head_hidden": 8}


def test_the_key_follows_boxes_photo_files_and_settings(tmp_path):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"one")
    key = cache_key("s", [photo], [(0, 0, 5, 5)])
    assert cache_key("s", [photo], [(0, 0, 5, 5)]) == key
    assert cache_key("s", [photo], [(0, 0, 6, 5)]) != key
    assert cache_key("t", [photo], [(0, 0, 5, 5)]) != key
    photo.write_bytes(b"other photo")
    assert cache_key("s", [photo], [(0, 0, 5, 5)]) != key


def test_a_truncated_or_foreign_cache_reads_as_missing(tmp_path):
    cache = tmp_path / "c.npz"
    save_npz(cache, features=np.ones((2, 3), np.float32), names=np.asarray(["a", "b"]), key=np.asarray("k"))
    assert read_cache(cache, "k", ["a", "b"]) is not None
    assert read_cache(cache, "other", ["a", "b"]) is None
    assert read_cache(cache, "k", ["a", "c"]) is None
    cache.write_bytes(cache.read_bytes()[:40])
    assert read_cache(cache, "k", ["a", "b"]) is None


def test_branch_features_are_recomputed_after_new_boxes_or_a_broken_cache(tiny_catalog, tmp_path, monkeypatch):
    catalog = load_catalog(tiny_catalog, need_test=False)
    names = catalog.train["Image"].tolist()[:4]
    paths = [catalog.train_path(n) for n in names]
    torch.manual_seed(0)
    model = build_model(MODEL).eval()
    ckpt = tmp_path / "best.pt"
    save_checkpoint(ckpt, {"model": model.state_dict()})
    run = pipeline.Run("tiny", 0, tmp_path, {"model": MODEL, "train": {}}, ckpt, 32)
    calls = []
    real = pipeline.compute_features

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "compute_features", counting)
    cache = tmp_path / "features" / "catalog.npz"

    def features(boxes):
        return pipeline.cached_features(model.encoder(), run, names, paths, boxes, cache, torch.device("cpu"),
                                        workers=0)

    whole = features([None] * 4)
    assert len(calls) == 1
    np.testing.assert_array_equal(features([None] * 4), whole)
    assert len(calls) == 1  # reused
    boxed = features([(2.0, 2.0, 20.0, 14.0)] * 4)  # a new boxes.csv
    assert len(calls) == 2 and not np.allclose(boxed, whole)
    cache.write_bytes(cache.read_bytes()[:100])  # a truncated cache
    np.testing.assert_allclose(features([(2.0, 2.0, 20.0, 14.0)] * 4), boxed, atol=1e-6)
    assert len(calls) == 3
