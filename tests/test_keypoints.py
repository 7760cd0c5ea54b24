"""Keypoint matching: the vectorised ratio test, homography inliers, caching, settings and the scores it writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from data.cache import row_keys
from data.catalog import load_catalog, read_folds
from data.errors import InputError
from data.io import load_npz
from data.synth_fluke import make_fluke
from data.synth_photo import render_photo
from matching.matrix import load_matrix
from matching.runs.keypoint_scores import keypoint_settings, score_keypoints, validation_images
from matching.runs.run import Run
from matching.similarity import keypoints as kp_module
from matching.similarity.keypoints import (
    Keypoints,
    KeypointSettings,
    cached_keypoints,
    detect,
    extract,
    inlier_matrix,
    ratio_matches,
)

ROOT = Path(__file__).resolve().parents[1]


def _brute_force_ratio(query: np.ndarray, gallery: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    dist = np.linalg.norm(gallery[:, None, :].astype(np.float64) - query[None, :, :], axis=2)
    order = np.argsort(dist, axis=1)
    first = dist[np.arange(len(gallery)), order[:, 0]]
    second = dist[np.arange(len(gallery)), order[:, 1]]
    return order[:, 0], first < ratio * second


def test_chunked_ratio_test_equals_a_brute_force_search():
    rng = np.random.default_rng(0)
    query = rng.random((23, 128)).astype(np.float32)
    gallery = np.concatenate([query[[3, 7, 7, 11]] + 0.01 * rng.random((4, 128)), rng.random((50, 128))])
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    gallery = (gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).astype(np.float32)
    nearest, good = ratio_matches(torch.from_numpy(query), torch.from_numpy(gallery), 0.8, chunk=7)
    want_nearest, want_good = _brute_force_ratio(query, gallery, 0.8)
    np.testing.assert_array_equal(nearest, want_nearest)
    np.testing.assert_array_equal(good, want_good)
    assert good[:4].all() and list(nearest[:4]) == [3, 7, 7, 11]  # the planted near-copies pass the test


def test_a_query_with_one_keypoint_has_no_ratio_test_matches():
    one = torch.ones(1, 128) / np.sqrt(128)
    _, good = ratio_matches(one, torch.rand(5, 128), 0.8, chunk=4)
    assert not good.any()


def _blobs(seed: int, shape=(240, 512)) -> np.ndarray:
    """A grey picture of smooth blobs and spots, textured enough for SIFT."""
    rng = np.random.default_rng(seed)
    field = cv2.resize(rng.standard_normal((12, 24)).astype(np.float32), shape[::-1], interpolation=cv2.INTER_CUBIC)
    img = np.where(field > 0.3, 220, 40).astype(np.uint8)
    for _ in range(40):
        cv2.circle(img, (int(rng.integers(shape[1])), int(rng.integers(shape[0]))), int(rng.integers(3, 9)),
                   int(rng.integers(0, 255)), -1)
    return cv2.GaussianBlur(img, (0, 0), 1.0)


def test_a_warped_copy_shares_many_homography_inliers_and_an_unrelated_picture_few():
    s = KeypointSettings(width=256)
    base = _blobs(1)
    h = np.array([[0.9, 0.12, 15], [-0.08, 0.95, 8], [2e-4, -1e-4, 1]])
    warped = cv2.warpPerspective(base, h, base.shape[::-1], borderValue=128)
    size = (s.width, round(s.width * base.shape[0] / base.shape[1]))
    parts = [detect(cv2.resize(img, size, interpolation=cv2.INTER_AREA), s) for img in (base, warped, _blobs(2))]
    assert all(len(p) > 30 for p, _ in parts)
    kp = Keypoints.from_lists(["base", "warped", "other"], parts)
    query = Keypoints.from_lists(["query"], [parts[0]])
    row = inlier_matrix(query, kp, s)[0]
    assert row[0] >= 0.8 * len(parts[0][0])  # the picture itself: nearly every keypoint agrees
    assert row[1] >= 25 and row[2] <= 8 and row[1] > 3 * row[2]
    square = inlier_matrix(kp, kp, s)
    assert np.all(np.diag(square) == 0)  # never scored against itself
    assert square[0, 1] >= 25 and square[1, 0] >= 25


def test_a_gallery_image_without_keypoints_keeps_the_columns_of_the_others_in_place():
    s = KeypointSettings(width=256)
    base = cv2.resize(_blobs(3), (256, 120), interpolation=cv2.INTER_AREA)
    part = detect(base, s)
    empty = detect(np.full((120, 256), 128, np.uint8), s)
    assert len(empty[0]) == 0
    half = (part[0][::2], part[1][::2])
    gallery = Keypoints.from_lists(["empty", "copy", "empty2", "half"], [empty, part, empty, half])
    row = inlier_matrix(Keypoints.from_lists(["q"], [part]), gallery, s)[0]
    assert row[0] == 0 and row[2] == 0
    assert row[1] >= 0.8 * len(part[0]) and 0.8 * len(half[0]) <= row[3] <= len(half[0])


@pytest.fixture(scope="module")
def fluke_photos(tmp_path_factory) -> tuple[list[Path], list[tuple], list[int]]:
    """Three photos each of three synthetic individuals (320 x 200, moderate pose and lighting)."""
    folder = tmp_path_factory.mktemp("flukes")
    paths, boxes, who = [], [], []
    for individual in range(3):
        look = make_fluke(np.random.default_rng([7, individual]), 320)
        for k in range(3):
            rgb, box = render_photo(look, np.random.default_rng([8, individual, k]), 320, 200, difficulty=0.5)
            path = folder / f"{individual}_{k}.png"
            cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            paths.append(path)
            boxes.append(box)
            who.append(individual)
    return paths, boxes, who


def test_photos_of_one_synthetic_whale_share_more_inliers_than_photos_of_two(fluke_photos):
    paths, boxes, who = fluke_photos
    s = KeypointSettings()
    kp = extract(paths, boxes, [p.name for p in paths], s)
    scores = inlier_matrix(kp, kp, s)
    same = np.equal.outer(who, who) & ~np.eye(len(who), dtype=bool)
    other = ~np.equal.outer(who, who)
    assert scores[same].min() > scores[other].max()
    for i in range(len(who)):  # every photo's best match is its own whale
        assert who[int(np.argmax(scores[i]))] == who[i]


def test_settings_come_from_the_config_section_and_bad_values_are_refused():
    s = KeypointSettings.from_config({"enabled": True, "width": 192, "ratio": 0.75}, "cfg.yaml")
    assert (s.enabled, s.width, s.ratio, s.max_keypoints) == (True, 192, 0.75, KeypointSettings().max_keypoints)
    with pytest.raises(InputError, match="cfg.yaml.*unknown key keypoints.widht"):
        KeypointSettings.from_config({"widht": 192}, "cfg.yaml")
    for bad in ({"ratio": 1.5}, {"min_matches": 3}, {"width": 8}, {"ransac_px": 0}, {"width": "256"},
                {"max_keypoints": 300.5}, {"enabled": "false"}, {"min_matches": None}, {"ratio": True}):
        with pytest.raises(InputError, match="cfg.yaml.*keypoints[.:]"):
            KeypointSettings.from_config(bad, "cfg.yaml")  # the schema (types) or the ranges here
    with pytest.raises(InputError, match="expected a mapping"):
        KeypointSettings.from_config(True, "cfg.yaml")
    assert KeypointSettings.from_config({"ransac_px": 4}, "cfg.yaml").ransac_px == 4.0  # an int where a float goes
    assert KeypointSettings(width=192).key() != KeypointSettings().key()
    assert KeypointSettings(ratio=0.7).key() == KeypointSettings().key()  # matching settings need no new keypoints


def test_keypoints_are_cached_per_image_list_and_settings(fluke_photos, tmp_path, monkeypatch):
    paths, boxes, _ = fluke_photos
    names = [p.name for p in paths[:3]]
    cache = tmp_path / "kp.npz"
    first = cached_keypoints(cache, paths[:3], boxes[:3], names, KeypointSettings())
    calls = []
    real = kp_module.extract
    monkeypatch.setattr(kp_module, "extract", lambda *a, **k: calls.append(len(a[0])) or real(*a, **k))
    again = cached_keypoints(cache, paths[:3], boxes[:3], names, KeypointSettings(ratio=0.7))
    assert not calls
    np.testing.assert_array_equal(again.descriptors, first.descriptors)
    np.testing.assert_array_equal(again.offsets, first.offsets)
    smaller = cached_keypoints(cache, paths[:3], boxes[:3], names, KeypointSettings(max_keypoints=20))
    assert calls == [3] and np.diff(smaller.offsets).max() <= 20
    stored = load_npz(cache)["keys"]
    assert stored.tolist() == row_keys(KeypointSettings(max_keypoints=20).key(), paths[:3], boxes[:3]).tolist()
    moved = [boxes[0], boxes[1], tuple(v + 4 for v in boxes[2])]  # a box predicted again
    cached_keypoints(cache, paths[:3], moved, names, KeypointSettings(max_keypoints=20))
    assert calls == [3, 1]  # that photo only
    cached_keypoints(cache, paths[:3], moved, names, KeypointSettings(max_keypoints=20))
    assert calls == [3, 1]


def _run(model: str, fold: int, section: dict | None) -> Run:
    config = {"model": {"name": model}} | ({} if section is None else {"keypoints": section})
    return Run(model, fold, Path(f"runs/{model}/fold{fold}"), config, Path("best.pt"), 64)


def test_keypoint_matching_follows_the_runs_configs_unless_switched():
    plain, enabled = _run("a", 0, None), _run("b", 1, {"enabled": True, "width": 192})
    assert keypoint_settings([plain], "auto") is None
    assert keypoint_settings([plain, enabled], "auto").width == 192
    assert keypoint_settings([plain, enabled], "off") is None
    assert keypoint_settings([plain], "on") == KeypointSettings()
    assert keypoint_settings([], "on") == KeypointSettings()
    with pytest.raises(InputError, match="runs/c/fold0/config.yaml"):
        keypoint_settings([_run("c", 0, {"enabled": True, "bogus": 1})], "auto")


def test_score_keypoints_writes_calibrated_test_and_out_of_fold_matrices(tiny_catalog, tmp_path):
    catalog = load_catalog(tiny_catalog)
    folds = read_folds(tiny_catalog / "folds.csv")
    val = validation_images(folds, [_run("m", 0, None)])
    assert val == folds.loc[folds["fold"] == 0, "Image"].tolist()
    written = score_keypoints(catalog, val, tmp_path, KeypointSettings(width=128), log=lambda *a: None)
    out = tmp_path / "scores" / "keypoints"
    assert written == [out / "test.npz", out / "oof.npz", out / "calibration.csv"]
    test, oof = load_matrix(out / "test.npz"), load_matrix(out / "oof.npz")
    known = catalog.train.loc[catalog.train["Id"] != "new_whale", "Image"].tolist()
    assert list(test.gallery) == known and list(oof.gallery) == known
    assert list(test.query) == catalog.test_images and list(oof.query) == val
    for m in (test, oof):
        assert m.scores.dtype == np.float32 and ((m.scores >= 0) & (m.scores <= 1)).all()
    column = {n: j for j, n in enumerate(known)}
    labels = dict(zip(catalog.train["Image"], catalog.train["Id"]))
    for i, name in enumerate(oof.query):
        if name in column:
            assert oof.scores[i, column[name]] == 0
    same = np.array([[labels[q] == labels[g] for g in known] for q in oof.query])
    selfs = np.array([[q == g for g in known] for q in oof.query])
    assert oof.scores[same & ~selfs].mean() > oof.scores[~same].mean()  # calibrated: increasing in inliers
    assert (tmp_path / "features" / "keypoints" / "catalog.npz").is_file()
    calib = pd.read_csv(out / "calibration.csv")
    assert calib.loc[0, "a"] > 0 and calib.loc[0, "pairs"] == len(val) * len(known) - sum(n in column for n in val)
    inliers = load_npz(tmp_path / "features" / "keypoints" / "inliers_oof.npz")
    assert list(inliers["names"]) == val and inliers["inliers"].shape == (len(val), len(known))
    # scored again without folds: no out-of-fold matrix, and the old one (of other test scores) is removed
    again = score_keypoints(catalog, None, tmp_path, KeypointSettings(width=128), log=lambda *a: None)
    assert again == [out / "test.npz"] and not (out / "oof.npz").exists() and not (out / "calibration.csv").exists()


def test_score_matrix_scores_with_keypoints_alone_when_asked(tiny_catalog, tmp_path):
    script = str(ROOT / "scripts" / "score_matrix.py")
    common = [sys.executable, script, "--data-dir", str(tiny_catalog), "--work-dir", str(tmp_path)]
    refused = subprocess.run(common, capture_output=True, text=True)
    assert refused.returncode == 2 and "no trained runs" in refused.stderr
    done = subprocess.run([*common, "--keypoints", "on"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "scores" / "keypoints" / "oof.npz").is_file()
    oof = load_matrix(tmp_path / "scores" / "keypoints" / "oof.npz")
    folds = read_folds(tiny_catalog / "folds.csv")
    assert sorted(oof.query) == sorted(folds.loc[folds["fold"] >= 0, "Image"])  # every fold's validation images
