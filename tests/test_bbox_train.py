"""A tiny detector training run on drawn photos: checkpoints, resume, routing, boxes.csv."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import bbox.train as bbox_train
from bbox.data import split_folds
from bbox.detector import load_checkpoint, load_detector
from bbox.predict import Prediction, load_fold_models, predict_photos, routes_for, write_boxes
from bbox.train import fold_checkpoint, train_folds
from data.catalog import read_boxes
from data.checkpoint import save_checkpoint
from data.errors import InputError

TINY_CFG = {
    "model": {
        "backbone": "mobilenetv3_small_050",
        "weights": None,
        "fpn_channels": 16,
        "box_head": 32,
        "min_size": 64,
        "max_size": 96,
        "anchor_sizes": [16, 32, 64, 128],
    },
    "data": {"load_side": 96},
    "train": {"folds": 2, "epochs": 1, "batch": 2, "lr": 0.005, "augment": 0.5, "seed": 3},
    "predict": {"batch": 4, "score_min": 0.0, "keep_score": 0.0},
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions run faster on one thread than on two cores shared with other work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _draw(path: Path, rng: np.random.Generator, size=(120, 80)) -> tuple[float, float, float, float]:
    """A grey noisy photo with one bright wide ellipse ('fluke'); returns its box."""
    w, h = size
    image = rng.normal(70, 12, (h, w, 3)).clip(0, 255).astype(np.uint8)
    bw, bh = int(rng.integers(50, 90)), int(rng.integers(16, 30))
    x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
    cv2.ellipse(image, (x0 + bw // 2, y0 + bh // 2), (bw // 2, bh // 2), 0, 0, 360, (230, 230, 230), -1)
    cv2.imwrite(str(path), image)
    return float(x0), float(y0), float(x0 + 2 * (bw // 2) + 1), float(y0 + 2 * (bh // 2) + 1)


@pytest.fixture
def drawn(tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    rng = np.random.default_rng(0)
    boxes = {f"p{i}.png": _draw(folder / f"p{i}.png", rng) for i in range(6)}
    return {n: folder / n for n in boxes}, boxes


def test_split_folds_is_balanced_disjoint_and_seeded():
    names = [f"n{i}" for i in range(11)]
    folds = split_folds(names, 3, seed=5)
    assert sorted(np.bincount(list(folds.values())).tolist()) == [3, 4, 4]
    assert folds == split_folds(names, 3, seed=5)
    assert folds != split_folds(names, 3, seed=6)


def test_tiny_training_writes_loadable_checkpoints_that_box_their_held_out_photos(drawn, tmp_path):
    paths, boxes = drawn
    reports = train_folds(boxes, paths, TINY_CFG, tmp_path / "work", progress=False)
    assert [r.fold for r in reports] == [0, 1]
    held = [set(r.predictions) for r in reports]
    assert held[0].isdisjoint(held[1]) and held[0] | held[1] == set(boxes)
    for r in reports:
        assert r.checkpoint == tmp_path / "work" / "bbox" / f"fold{r.fold}.pt"
        state = torch.load(r.checkpoint, weights_only=True)
        assert state["done"] and set(state["holdout"]) == set(r.predictions)
        model, _ = load_detector(r.checkpoint)
        assert not model.training
        assert r.train_images == len(boxes) - len(r.predictions)

    folds = load_fold_models(tmp_path / "work")
    extra = tmp_path / "train" / "new.png"
    _draw(extra, np.random.default_rng(9), size=(150, 70))
    names = [*boxes, "new.png"]
    preds = predict_photos(
        folds.models,
        [*paths.values(), extra],
        routes=routes_for(names, folds.holdouts),
        cfg=TINY_CFG["predict"],
        max_side=96,
        progress=False,
    )
    out, _ = write_boxes(dict(zip(names, preds)), tmp_path / "boxes.csv")
    written = read_boxes(out, image_dir=tmp_path / "train")  # refuses boxes outside their photo
    assert written, "keep_score 0 keeps every photo with any detection"
    for name, (x0, y0, x1, y1) in written.items():
        h, w = cv2.imread(str(tmp_path / "train" / name)).shape[:2]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def test_a_resumed_training_ends_with_the_same_weights_as_an_unbroken_one(drawn, tmp_path, monkeypatch):
    paths, boxes = drawn
    cfg = {**TINY_CFG, "train": {**TINY_CFG["train"], "epochs": 2, "folds": 2}}
    small = dict(list(boxes.items())[:4])
    train_folds(small, paths, cfg, tmp_path / "a", progress=False)

    real_save = bbox_train.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(bbox_train, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_folds(small, paths, cfg, tmp_path / "b", progress=False)
    assert load_checkpoint(fold_checkpoint(tmp_path / "b", 0))["epoch"] == 1
    monkeypatch.setattr(bbox_train, "save_checkpoint", real_save)
    train_folds(small, paths, cfg, tmp_path / "b", resume=True, progress=False)
    for k in (0, 1):
        a = load_checkpoint(fold_checkpoint(tmp_path / "a", k))["model"]
        b = load_checkpoint(fold_checkpoint(tmp_path / "b", k))["model"]
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_routes_send_held_out_photos_to_their_fold_only():
    routes = routes_for(["a", "b", "unknown"], [{"a"}, {"b"}, set()])
    assert routes == [[0], [1], [0, 1, 2]]


def test_an_unfinished_fold_is_not_used_for_prediction(tmp_path):
    save_checkpoint(fold_checkpoint(tmp_path, 0), {"model": {}, "config": TINY_CFG, "done": False})
    with pytest.raises(InputError, match="did not finish"):
        load_fold_models(tmp_path)


def test_no_checkpoints_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="run scripts/train_bbox.py first"):
        load_fold_models(tmp_path)


def test_photos_without_a_box_are_reported_and_a_stale_report_removed(tmp_path):
    preds = {"a.jpg": Prediction((1.0, 2.0, 30.0, 12.0), 0.9), "b.jpg": Prediction(None, 0.1)}
    out, report = write_boxes(preds, tmp_path / "boxes.csv")
    assert report == tmp_path / "boxes_missing.csv"
    assert report.read_text().splitlines() == ["Image,score", "b.jpg,0.1"]
    assert out.read_text().splitlines() == ["Image,x0,y0,x1,y1", "a.jpg,1.0,2.0,30.0,12.0"]
    _, report = write_boxes({"a.jpg": preds["a.jpg"]}, tmp_path / "boxes.csv")
    assert report is None and not (tmp_path / "boxes_missing.csv").exists()


@pytest.mark.slow
def test_demo_config_reaches_iou_0_8_on_held_out_synthetic_photos(tmp_path):
    from data.config import load_config
    from data.settings import Bbox
    from data.synthetic import SynthConfig, write_catalog

    catalog = tmp_path / "synthetic"
    write_catalog(catalog, SynthConfig(seed=7, individuals=40, test_photos=40), progress=False)
    boxes = read_boxes(catalog / "truth_boxes.csv")
    paths = {n: catalog / ("train" if (catalog / "train" / n).is_file() else "test") / n for n in boxes}
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "bbox/default.yaml", schema=Bbox)
    reports = train_folds(boxes, paths, cfg, tmp_path / "work", progress=False)
    summary = bbox_train.fold_summary(reports, boxes)
    assert summary["mean_iou"].iloc[-1] >= 0.8, summary.to_string()
