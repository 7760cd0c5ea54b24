"""The box scripts end to end: train_bbox.py and predict_bbox.py on a small catalog."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from data.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def _script(name: str, *args, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _catalog(folder: Path, n_train: int = 6, n_test: int = 2) -> dict:
    """A drawn catalog: grey photos with one bright ellipse each, train.csv, test/ and truth_boxes.csv."""
    rng = np.random.default_rng(1)
    rows, boxes = [], []
    for part, count in (("train", n_train), ("test", n_test)):
        (folder / part).mkdir(parents=True)
        for i in range(count):
            name = f"{part}{i}.png"
            image = rng.normal(70, 12, (80, 120, 3)).clip(0, 255).astype(np.uint8)
            x0, y0 = int(rng.integers(0, 40)), int(rng.integers(0, 40))
            cv2.ellipse(image, (x0 + 35, y0 + 12), (35, 12), 0, 0, 360, (230, 230, 230), -1)
            cv2.imwrite(str(folder / part / name), image)
            boxes.append((name, x0, y0, x0 + 71, y0 + 25))
            if part == "train":
                rows.append((name, f"w{i % 3}"))
    pd.DataFrame(rows, columns=["Image", "Id"]).to_csv(folder / "train.csv", index=False)
    pd.DataFrame(boxes, columns=["Image", "x0", "y0", "x1", "y1"]).to_csv(
        folder / "truth_boxes.csv", index=False
    )
    return {b[0]: b[1:] for b in boxes}


def _tiny_config(path: Path) -> Path:
    cfg = {
        "base": str(REPO / "configs" / "bbox/default.yaml"),
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
        "train": {"folds": 2, "epochs": 1, "batch": 2, "max_images": None, "device": "cpu"},
        "predict": {"score_min": 0.0, "keep_score": 0.0},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _main(name: str, *args, monkeypatch) -> int:
    """Run a script's ``main()`` in this process (its bad-input errors surface as InputError)."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    module = importlib.import_module(name)
    monkeypatch.setattr(sys, "argv", [name, *map(str, args)])
    return module.main()


def test_train_bbox_without_training_boxes_names_the_file_and_the_flag(tmp_path, monkeypatch):
    _catalog(tmp_path / "cat")
    (tmp_path / "cat" / "truth_boxes.csv").unlink()
    with pytest.raises(InputError) as err:
        _main(
            "train_bbox",
            "--data-dir",
            tmp_path / "cat",
            "--work-dir",
            tmp_path / "work",
            monkeypatch=monkeypatch,
        )
    assert "truth_boxes.csv" in str(err.value) and "--boxes" in str(err.value)
    assert not (tmp_path / "work").exists()


def test_train_bbox_refuses_a_box_outside_its_photo(tmp_path, monkeypatch):
    _catalog(tmp_path / "cat")
    bad = tmp_path / "bad.csv"
    bad.write_text("Image,x0,y0,x1,y1\ntrain0.png,10,10,400,30\n")
    with pytest.raises(InputError, match="goes outside the image"):
        _main(
            "train_bbox",
            "--data-dir",
            tmp_path / "cat",
            "--work-dir",
            tmp_path / "work",
            "--boxes",
            bad,
            monkeypatch=monkeypatch,
        )


def test_predict_bbox_without_trained_folds_fails_clearly(tmp_path, monkeypatch):
    _catalog(tmp_path / "cat")
    with pytest.raises(InputError, match="run scripts/train_bbox.py first"):
        _main(
            "predict_bbox",
            "--data-dir",
            tmp_path / "cat",
            "--work-dir",
            tmp_path / "work",
            monkeypatch=monkeypatch,
        )
    assert not (tmp_path / "cat" / "boxes.csv").exists()


@pytest.mark.slow
def test_scripts_train_then_write_boxes_csv_and_contact_sheet(tmp_path):
    truth = _catalog(tmp_path / "cat")
    config = _tiny_config(tmp_path / "tiny.yaml")
    common = ["--data-dir", tmp_path / "cat", "--work-dir", tmp_path / "work", "--config", config]
    trained = _script("train_bbox.py", *common)
    assert trained.returncode == 0, trained.stderr
    assert "out-of-fold mean IoU" in trained.stdout.splitlines()[-1]
    assert (tmp_path / "work" / "bbox" / "fold0.pt").is_file() and (
        tmp_path / "work" / "bbox" / "fold1.pt"
    ).is_file()
    metrics = pd.read_csv(tmp_path / "work" / "bbox" / "metrics.csv")
    assert metrics["holdout_images"].iloc[-1] == len(truth)

    predicted = _script("predict_bbox.py", *common)
    assert predicted.returncode == 0, predicted.stderr
    boxes = pd.read_csv(tmp_path / "cat" / "boxes.csv")
    missing_csv = tmp_path / "cat" / "boxes_missing.csv"
    missing = pd.read_csv(missing_csv)["Image"].tolist() if missing_csv.exists() else []
    assert sorted(boxes["Image"].tolist() + missing) == sorted(truth)
    assert (boxes[["x0", "y0"]].to_numpy() >= 0).all()
    assert (boxes["x1"] <= 120).all() and (boxes["y1"] <= 80).all()
    sheet = cv2.imread(str(tmp_path / "cat" / "boxes_sheet.png"))
    assert sheet is not None and sheet.shape[0] > 100
    assert "mean IoU against" in predicted.stdout
