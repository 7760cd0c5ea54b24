"""The one cache (data/cache.py) behind branch features and keypoints: reused while photos, boxes and settings
hold; a new box, a replaced photo or a truncated cache file means a recomputation, never a traceback."""

from __future__ import annotations

import numpy as np
import torch

import matching.runs.run as pipeline
from data.cache import Rows, cached_rows, row_keys
from data.catalog import load_catalog
from data.checkpoint import save_checkpoint
from data.io import save_npz
from siamese.model import build_model

MODEL = {"name": "tiny", "branch": "test_efficientnet", "in_chans": 3, "pool": "max", "pretrained": False,
         "weights": None, "head_hidden": 8}


def test_a_row_key_follows_the_photo_bytes_its_box_and_the_settings(tmp_path):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"one")
    key = row_keys("s", [photo], [(0, 0, 5, 5)])[0]
    assert row_keys("s", [photo], [(0, 0, 5, 5)])[0] == key
    assert row_keys("s", [photo], [(0, 0, 6, 5)])[0] != key
    assert row_keys("t", [photo], [(0, 0, 5, 5)])[0] != key
    copy = tmp_path / "sub" / "b.jpg"  # the same bytes elsewhere (a batch photo moved into the catalog)
    copy.parent.mkdir()
    copy.write_bytes(b"one")
    assert row_keys("s", [copy], [(0, 0, 5, 5)])[0] == key
    photo.write_bytes(b"other photo")
    assert row_keys("s", [photo], [(0, 0, 5, 5)])[0] != key


def _photos(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(n.encode() * 3)
    return [folder / n for n in names]


def _counting(calls):
    def compute_for(names):
        def compute(rows):
            calls.append([str(names[i]) for i in rows])
            return Rows(np.asarray(names)[rows], features=np.asarray([[len(names[i]), i] for i in rows], np.float32)
                        .reshape(-1, 2))
        return compute
    return compute_for


def test_a_grown_set_computes_only_its_new_photos_and_keeps_the_order(tmp_path):
    calls = []
    compute_for = _counting(calls)
    cache = tmp_path / "features" / "catalog.npz"
    names = ["a.jpg", "bb.jpg", "c.jpg"]
    paths = _photos(tmp_path / "train", names)
    first = cached_rows(cache, row_keys("s", paths, [None] * 3), names, compute_for(names))
    assert calls == [names]
    grown = ["d.jpg", "a.jpg", "eee.jpg", "c.jpg", "bb.jpg"]
    paths = _photos(tmp_path / "train", grown)
    again = cached_rows(cache, row_keys("s", paths, [None] * 5), grown, compute_for(grown))
    assert calls[1] == ["d.jpg", "eee.jpg"]  # only the new photos
    assert again.names.tolist() == grown
    by_name = dict(zip(first.names, first["features"].tolist()))
    for name, row in zip(grown, again["features"].tolist()):
        if name in by_name:
            assert row == by_name[name]  # reused rows: the values made for that photo, in the new order
    cached_rows(cache, row_keys("s", paths, [None] * 5), grown, compute_for(grown))
    assert len(calls) == 2  # the whole set cached now
    (tmp_path / "train" / "c.jpg").write_bytes(b"a replaced photo")
    cached_rows(cache, row_keys("s", paths, [None] * 5), grown, compute_for(grown))
    assert calls[2] == ["c.jpg"]


def test_rows_are_found_in_the_other_cache_files_of_the_folder(tmp_path):
    calls = []
    compute_for = _counting(calls)
    test_paths = _photos(tmp_path / "batch", ["q1.jpg", "q2.jpg"])
    cached_rows(tmp_path / "f" / "test.npz", row_keys("s", test_paths, [None] * 2), ["q1.jpg", "q2.jpg"],
                compute_for(["q1.jpg", "q2.jpg"]))
    catalog = ["a.jpg", "q2.jpg"]  # q2 confirmed and copied into the catalog
    paths = _photos(tmp_path / "train", ["a.jpg"]) + [tmp_path / "train" / "q2.jpg"]
    paths[1].write_bytes(test_paths[1].read_bytes())
    got = cached_rows(tmp_path / "f" / "catalog.npz", row_keys("s", paths, [None] * 2), catalog, compute_for(catalog))
    assert calls[1] == ["a.jpg"] and got.names.tolist() == catalog


def test_hidden_files_of_other_processes_are_not_siblings(tmp_path):
    """Under torchrun a rank's part (``.<name>.part0of2.npz``) may lie in the folder while another rank looks up
    its rows: taking rows from it would give the ranks different missing sets."""
    calls = []
    compute_for = _counting(calls)
    names = ["a.jpg", "b.jpg"]
    keys = row_keys("s", _photos(tmp_path / "train", names), [None] * 2)
    folder = tmp_path / "f"
    folder.mkdir()
    save_npz(folder / ".test.fresh.part0of2.npz", features=np.zeros((1, 2), np.float32), names=np.asarray(names[:1]),
             keys=keys[:1])
    cached_rows(folder / "test.npz", keys, names, compute_for(names))
    assert calls == [names]


def test_a_truncated_or_foreign_cache_reads_as_missing(tmp_path):
    calls = []
    compute_for = _counting(calls)
    names = ["a.jpg", "b.jpg"]
    keys = row_keys("s", _photos(tmp_path / "train", names), [None] * 2)
    cache = tmp_path / "c.npz"
    save_npz(cache, features=np.ones((2, 2), np.float32), names=np.asarray(names))  # no keys: foreign
    cached_rows(cache, keys, names, compute_for(names))
    assert calls == [names]
    cache.write_bytes(cache.read_bytes()[:40])
    got = cached_rows(cache, keys, names, compute_for(names))
    assert calls[1] == names and got["features"].shape == (2, 2)


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
