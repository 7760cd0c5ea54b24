import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.synthetic import NEW_WHALE, SynthConfig, write_catalog
from matching.baseline import cosine_map5, pixel_vectors, raw_pixel_baseline

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


def test_a_query_identical_to_a_gallery_photo_scores_one(tiny, tmp_path):
    """Test photos that are copies of catalog photos are matched first, whole or cropped."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    shutil.rmtree(copy / "test")
    (copy / "test").mkdir()
    train = pd.read_csv(copy / "train.csv")
    picked = train[train["Id"] != NEW_WHALE].groupby("Id").head(1)
    for name in picked["Image"]:
        shutil.copy(copy / "train" / name, copy / "test" / name)
    picked.to_csv(copy / "truth.csv", index=False)
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
