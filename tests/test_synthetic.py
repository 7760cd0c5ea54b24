import re
import runpy
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import data.synthetic as synthetic
from data.catalog import NEW_WHALE
from data.errors import InputError
from data.synth_fluke import make_fluke
from data.synth_photo import render_photo
from data.synthetic import SynthConfig, long_tail_counts, plan_catalog, write_catalog

REPO = Path(__file__).resolve().parents[1]
TINY = SynthConfig(individuals=5, mean_photos=2.0, max_photos=4, test_photos=8, width=160, height=100)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "catalog"
    write_catalog(out, TINY, progress=False)
    return out


def test_same_seed_gives_byte_identical_files_and_another_seed_different_ones(tiny, tmp_path):
    write_catalog(tmp_path / "again", TINY, progress=False)
    write_catalog(tmp_path / "other", SynthConfig(**{**TINY.__dict__, "seed": 1}), progress=False)
    first, again, other = _files(tiny), _files(tmp_path / "again"), _files(tmp_path / "other")
    assert first == again
    assert first["train.csv"] != other["train.csv"]
    photos = sorted(k for k in first if k.endswith(".jpg"))
    other_photos = sorted(k for k in other if k.endswith(".jpg"))
    assert photos != other_photos


def test_csvs_list_every_photo_once_with_kaggle_style_names_and_ids(tiny):
    train = pd.read_csv(tiny / "train.csv")
    truth = pd.read_csv(tiny / "truth.csv")
    boxes = pd.read_csv(tiny / "truth_boxes.csv")
    assert list(train.columns) == ["Image", "Id"] and list(truth.columns) == ["Image", "Id"]
    assert sorted(train["Image"]) == sorted(p.name for p in (tiny / "train").iterdir())
    assert sorted(truth["Image"]) == sorted(p.name for p in (tiny / "test").iterdir())
    assert sorted(boxes["Image"]) == sorted([*train["Image"], *truth["Image"]])
    assert all(re.fullmatch(r"[0-9a-f]{9}\.jpg", n) for n in boxes["Image"])
    known = set(train["Id"]) - {NEW_WHALE}
    assert len(known) == TINY.individuals
    assert all(re.fullmatch(r"w_[0-9a-f]{7}", i) for i in known)
    assert (train["Id"] == NEW_WHALE).any()
    assert set(truth["Id"]) - {NEW_WHALE} <= known


def test_true_boxes_lie_inside_the_photo_and_cover_a_good_share_of_it(tiny):
    boxes = pd.read_csv(tiny / "truth_boxes.csv")
    for row in boxes.itertuples():
        folder = "train" if (tiny / "train" / row.Image).exists() else "test"
        h, w = cv2.imread(str(tiny / folder / row.Image)).shape[:2]
        assert (h, w) == (TINY.height, TINY.width)
        assert 0 <= row.x0 < row.x1 <= w and 0 <= row.y0 < row.y1 <= h
        assert (row.x1 - row.x0) >= 0.35 * w


def test_box_encloses_the_fluke_pixels_of_a_plain_render():
    look = make_fluke(np.random.default_rng(3), 160)
    img, (x0, y0, x1, y1) = render_photo(look, np.random.default_rng(4), 160, 100, difficulty=0.0)
    dark = img.astype(int).sum(axis=2) < 3 * 40  # black skin of the fluke: only inside the box
    outside = dark.copy()
    outside[y0:y1, x0:x1] = False
    assert dark[y0:y1, x0:x1].sum() > 100
    assert outside.sum() < 0.02 * dark.sum()


def test_default_proportions_give_a_quarter_new_whale_in_test_and_38_percent_in_train():
    plan = plan_catalog(SynthConfig())
    test = plan.split("test")
    train = plan.split("train")
    assert len(test) == 200
    assert abs(sum(p.label == NEW_WHALE for p in test) / len(test) - 0.25) < 0.02
    assert abs(sum(p.label == NEW_WHALE for p in train) / len(train) - 0.38) < 0.02
    assert 600 <= len(train) <= 800
    known_ids = {p.label for p in train} - {NEW_WHALE}
    test_new = {p.individual for p in test if p.label == NEW_WHALE}
    assert test_new.isdisjoint({p.individual for p in train})
    assert len(known_ids) == 120


def test_photos_per_whale_follow_a_long_tail():
    counts = long_tail_counts(np.random.default_rng(0), 5000, mean=3.8, maximum=40)
    histogram = np.bincount(counts)
    assert histogram[1] > histogram[2] > histogram[3] > histogram[4] > histogram[6]
    assert 0.5 < (counts <= 2).mean() < 0.75
    assert counts.max() >= 8 * np.median(counts)
    assert abs(counts.mean() - 3.8) < 0.6


def test_a_mirrored_individual_is_a_different_individual():
    for seed in range(5):
        look = make_fluke(np.random.default_rng(seed), 160)
        mirror = look.mirrored()
        inside = (look.alpha > 0.5) | (mirror.alpha > 0.5)
        pattern_differs = np.abs(look.white - mirror.white)[inside] > 0.5
        silhouette_differs = (look.alpha > 0.5) != (mirror.alpha > 0.5)
        assert pattern_differs.mean() > 0.05
        assert silhouette_differs.sum() > 0.01 * inside.sum()


def _same_whale_similarity(difficulty: float) -> float:
    """Mean cosine of grey fluke-box thumbnails between two photos of the same individual."""
    sims = []
    for k in range(4):
        look = make_fluke(np.random.default_rng(k), 160)
        vecs = []
        for j in range(2):
            img, (x0, y0, x1, y1) = render_photo(look, np.random.default_rng([k, j]), 160, 100, difficulty)
            grey = cv2.cvtColor(img[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
            v = cv2.resize(grey, (32, 16), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
            v -= v.mean()
            vecs.append(v / np.linalg.norm(v))
        sims.append(float(vecs[0] @ vecs[1]))
    return float(np.mean(sims))


def test_difficulty_scales_the_nuisance_between_photos_of_one_whale():
    assert _same_whale_similarity(0.0) > _same_whale_similarity(1.5) + 0.1


def test_existing_target_is_refused_unless_forced_and_a_foreign_folder_is_never_replaced(tiny, tmp_path):
    out = tmp_path / "cat"
    write_catalog(out, TINY, progress=False)
    (out / "marker").write_text("old")
    with pytest.raises(InputError, match="already exists"):
        write_catalog(out, TINY, progress=False)
    write_catalog(out, TINY, force=True, progress=False)
    assert not (out / "marker").exists() and _files(out) == _files(tiny)
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(InputError, match="not a catalog"):
        write_catalog(foreign, TINY, force=True, progress=False)
    assert (foreign / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat", "notes"]


def test_a_run_that_fails_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []
    real = synthetic.render_individual

    def failing(cfg, individual, names):
        calls.append(individual)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(cfg, individual, names)

    monkeypatch.setattr(synthetic, "render_individual", failing)
    with pytest.raises(KeyboardInterrupt):
        write_catalog(tmp_path / "cat", TINY, progress=False)
    assert list(tmp_path.iterdir()) == []


def _run_script(args: list[str], monkeypatch) -> int:
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    monkeypatch.setattr(sys, "argv", ["make_synthetic.py", *args])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(REPO / "scripts" / "make_synthetic.py"), run_name="__main__")
    return int(stop.value.code or 0)


def test_script_writes_the_catalog_and_refuses_to_overwrite_it(tmp_path, monkeypatch, capsys):
    args = ["--out", str(tmp_path / "c"), "--seed", "3", "--individuals", "3", "--test-photos", "4",
            "--width", "128", "--height", "80", "--quiet"]
    assert _run_script(args, monkeypatch) == 0
    assert "3 known individuals" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "c" / "truth.csv")) == 4
    assert (tmp_path / "c" / "contact_sheet.png").stat().st_size > 0
    assert _run_script(args, monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "already exists" in err
