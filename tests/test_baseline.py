import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.catalog import NEW_WHALE
from data.synthetic import SynthConfig, write_catalog
from matching.evaluation.baseline import cosine_map5, pixel_vectors, raw_pixel_baseline

REPO = Path(__file__).resolve().parents[1]
TINY = SynthConfig(individuals=6, mean_photos=2.0, max_photos=4, test_photos=10, width=160, height=100)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("baseline") / "catalog"
    write_catalog(out, TINY, progress=False)
    return out


def test_baseline_on_a_tiny_catalog_is_a_map_over_every_test_photo(tiny):
    result = raw_pixel_baseline(tiny)
    crop = raw_pixel_baseline(tiny, crop=True)
    train = pd.read_csv(tiny / "train.csv")
    for r in (result, crop):
        assert 0.0 <= r.map5 <= 1.0
        assert r.queries == TINY.test_photos
        assert r.gallery == int((train["Id"] != NEW_WHALE).sum())



def catalog_with_test_copies(catalog: Path, copy: Path) -> Path:
    """A copy of ``catalog`` whose test photos are copies of one catalog photo of each known whale."""
    shutil.copytree(catalog, copy)
    shutil.rmtree(copy / "test")
    (copy / "test").mkdir()
    train = pd.read_csv(copy / "train.csv")
    picked = train[train["Id"] != NEW_WHALE].groupby("Id").head(1)
    for name in picked["Image"]:
        shutil.copy(copy / "train" / name, copy / "test" / name)
    picked.to_csv(copy / "truth.csv", index=False)
    return copy

def test_a_query_identical_to_a_gallery_photo_scores_one(tiny, tmp_path):
    """Test photos that are copies of catalog photos are matched first, whole or cropped."""
    copy = catalog_with_test_copies(tiny, tmp_path / "copy")
    assert raw_pixel_baseline(copy).map5 == pytest.approx(1.0)
    assert raw_pixel_baseline(copy, crop=True).map5 == pytest.approx(1.0)


def test_pixel_vectors_are_unit_length_and_blind_to_brightness_and_contrast(tiny, tmp_path):
    import cv2

    name = pd.read_csv(tiny / "train.csv")["Image"][0]
    img = cv2.imread(str(tiny / "train" / name)).astype(np.float32)
    cv2.imwrite(str(tmp_path / name), np.clip(0.6 * img + 40, 0, 255).astype(np.uint8),
                [cv2.IMWRITE_JPEG_QUALITY, 100])
    a, b = pixel_vectors([tiny / "train" / name, tmp_path / name])
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)
    assert float(a @ b) > 0.98


def test_new_whale_goes_first_for_a_query_unlike_every_gallery_photo():
    gallery = np.eye(4, dtype=np.float32)
    labels = ["w_a", "w_a", "w_b", "w_c"]
    queries = np.array([[0, 0.1, 0.99, 0], [0.7, 0.7, 0, 0.1], [0, 0, 0, 0]], dtype=np.float32)
    value, threshold = cosine_map5(queries, gallery, labels, ["w_b", "w_a", NEW_WHALE])
    assert value == pytest.approx(1.0)
    assert 0.0 <= threshold < 0.7


def test_script_prints_both_versions_and_ends_with_the_whole_photo_map(tiny, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    monkeypatch.setattr(sys, "argv", ["baseline.py", "--data-dir", str(tiny)])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(REPO / "scripts" / "baseline.py"), run_name="__main__")
    assert stop.value.code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("fluke crop: MAP@5") for line in lines)
    assert lines[-1] == f"MAP@5 {raw_pixel_baseline(tiny).map5:.4f}"


# ---- frozen ImageNet branch features ----------------------------------------------------------------

from data.catalog import load_catalog, read_folds  # noqa: E402
from data.folds import fold_split  # noqa: E402
from matching.evaluation.baseline import (  # noqa: E402
    branch_features,
    cached_run_features,
    feature_baseline,
    frozen_branch,
    needed_images,
    oof_parts,
    same_features,
)


@pytest.fixture(scope="module")
def lite0():
    return frozen_branch()  # ImageNet EfficientNet-Lite0, offline weights


def _features_from(catalog_dir: Path, vector_of) -> dict:
    """Unit features of every catalog and test photo: ``vector_of(part, name, whale)``."""
    train = pd.read_csv(catalog_dir / "train.csv")
    truth = pd.read_csv(catalog_dir / "truth.csv")
    out = {}
    for part, df in (("train", train), ("test", truth)):
        for name, whale in zip(df["Image"], df["Id"]):
            v = np.asarray(vector_of(part, name, whale), np.float32)
            out[(part, name)] = v / np.linalg.norm(v)
    return out


def test_fold_protocol_scores_validation_photos_against_their_folds_training_photos_only(tiny_catalog):
    folds_df = read_folds(tiny_catalog / "folds.csv")
    rng = np.random.default_rng(0)
    feats = _features_from(tiny_catalog, lambda *_: rng.normal(size=16))
    for k, part in oof_parts(feats, folds_df, [0, 1], "fold").items():
        train_df, val_df = fold_split(folds_df, k, include_singletons=True)
        assert part.query == val_df["Image"].tolist()
        assert part.gallery == train_df.loc[train_df["Id"] != NEW_WHALE, "Image"].tolist()
        assert not set(part.query) & set(part.gallery)
        assert NEW_WHALE not in part.gallery_labels
        assert np.isfinite(part.scores).all()


def test_catalog_protocol_never_matches_a_photo_with_itself(tiny_catalog):
    """Unrelated random features: only a photo's own column could rank its whale first, and it is masked."""
    folds_df = read_folds(tiny_catalog / "folds.csv")
    rng = np.random.default_rng(1)
    feats = _features_from(tiny_catalog, lambda *_: rng.normal(size=512))
    for part in oof_parts(feats, folds_df, [0, 1], "catalog").values():
        assert set(part.query) <= set(part.gallery) | {n for n, w in zip(part.query, part.truth) if w == NEW_WHALE}
        for i, name in enumerate(part.query):
            if name in part.gallery:
                assert part.scores[i, part.gallery.index(name)] == -np.inf
        best = part.scores.argmax(axis=1)
        assert not any(part.gallery[j] == q for j, q in zip(best, part.query))


def test_features_equal_within_a_whale_give_map5_one_out_of_fold_and_on_test(tiny_catalog):
    train, truth = pd.read_csv(tiny_catalog / "train.csv"), pd.read_csv(tiny_catalog / "truth.csv")
    whales = sorted(set(train["Id"]) | set(truth["Id"]))
    names = sorted(train["Image"]) + sorted(truth["Image"])

    def one_hot(part, name, whale):  # new_whale photos: a direction of their own, unlike every whale
        v = np.zeros(len(whales) + len(names))
        v[whales.index(whale) if whale != NEW_WHALE else len(whales) + names.index(name)] = 1.0
        return v

    feats = _features_from(tiny_catalog, one_hot)
    for protocol in ("fold", "catalog"):
        r = feature_baseline(tiny_catalog, protocol=protocol, features=feats)
        assert r.folds == [0, 1]
        assert r.oof_map5 == pytest.approx(1.0)
        assert all(v == pytest.approx(1.0) for v in r.fold_map5.values())
        assert 0.0 <= r.threshold < 1.0
        # Test: a catalog whale's photo finds it first, a new_whale photo gets new_whale first.
        findable = int((truth["Id"].isin(train["Id"]) | (truth["Id"] == NEW_WHALE)).sum())
        assert r.test.queries == 12 and r.test.top1_correct == findable
        assert r.test.new_whale_hits == r.test.truth_new_whale > 0


def test_frozen_lite0_baseline_on_the_tiny_catalog(tiny_catalog, lite0):
    r = feature_baseline(tiny_catalog, size=64, branch=lite0)
    folds_df = read_folds(tiny_catalog / "folds.csv")
    assert r.oof_queries == int((folds_df["fold"] >= 0).sum())
    assert 0.0 <= r.oof_map5 <= 1.0 and np.isfinite(r.threshold)
    assert r.test.queries == 12
    assert r.gallery == int((pd.read_csv(tiny_catalog / "train.csv")["Id"] != NEW_WHALE).sum())
    assert r.test_oracle_map5 >= r.test.map5 - 1e-9


def test_test_photos_copied_from_the_catalog_are_found_first(tiny_catalog, lite0, tmp_path):
    copy = catalog_with_test_copies(tiny_catalog, tmp_path / "copy")
    (copy / "boxes.csv").unlink()  # the copies have no boxes of their own: whole photos on both sides
    r = feature_baseline(copy, size=64, branch=lite0)
    assert r.test_oracle_map5 == pytest.approx(1.0)
    queries = len(pd.read_csv(copy / "truth.csv"))
    assert r.test.found_at_rank[0] + r.test.found_at_rank[1] == queries  # first, or second after new_whale


def test_cached_features_are_reused_only_when_they_match_fresh_frozen_ones(tiny_catalog, lite0, tmp_path):
    from data.io import save_npz

    catalog = load_catalog(tiny_catalog)
    keys = needed_images(catalog, with_test=True)
    raw = {}
    from siamese.infer import compute_features

    paths = [catalog.train_path(n) if p == "train" else catalog.test_path(n) for p, n in keys]
    raw = dict(zip(keys, compute_features(lite0, paths, [catalog.box(n) for _, n in keys], 64)))
    train_keys = [k for k in keys if k[0] == "train"]
    test_keys = [k for k in keys if k[0] == "test"]
    for fold, part, ks in (("fold0", "catalog", train_keys), ("fold0", "test", test_keys)):
        save_npz(tmp_path / "run" / fold / f"{part}.npz", features=np.stack([raw[k] for k in ks]),
                 names=np.asarray([n for _, n in ks], dtype=str), key=np.asarray("k"))
    known = cached_run_features(tmp_path / "run")
    assert set(known) == set(keys)
    assert same_features(catalog, known, 64, branch=lite0)
    assert not same_features(catalog, known, 96, branch=lite0)  # another size: other features
    shifted = {k: v + (k == keys[0]) * 10.0 for k, v in known.items()}
    assert not same_features(catalog, shifted, 64, branch=lite0, samples=len(keys))
    fresh = branch_features(catalog, keys, 64, branch=lite0)
    reused = branch_features(catalog, keys, 64, known=known)
    assert max(float(np.abs(fresh[k] - reused[k]).max()) for k in keys) < 1e-4


def test_script_lite0_ends_with_the_test_map_and_writes_both_protocols(tiny_catalog, monkeypatch, capsys, tmp_path):
    import json

    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    out = tmp_path / "b.json"
    monkeypatch.setattr(sys, "argv", ["baseline.py", "--data-dir", str(tiny_catalog), "--features", "lite0",
                                      "--size", "64", "--json", str(out)])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(REPO / "scripts" / "baseline.py"), run_name="__main__")
    assert stop.value.code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    record = json.loads(out.read_text())
    assert [r["protocol"] for r in record["results"]] == ["fold", "catalog"]
    assert lines[-1] == f"MAP@5 {record['results'][0]['test']['map5']:.4f}"
    assert any(line.startswith("out-of-fold (fold protocol)") for line in lines)
