"""Stale or broken files between steps end in one line naming the file, exit status 2, and nothing written:
a folds.csv that no longer matches train.csv, a truncated score matrix."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def catalog_copy(tiny_catalog, tmp_path) -> Path:
    out = tmp_path / "catalog"
    shutil.copytree(tiny_catalog, out)
    return out


@pytest.mark.parametrize("change", ["rows dropped", "Id relabelled"])
def test_train_fold_refuses_a_stale_folds_csv(catalog_copy, tmp_path, change):
    folds = pd.read_csv(catalog_copy / "folds.csv")
    if change == "rows dropped":
        folds = folds.iloc[2:]
    else:
        known = folds.index[folds["Id"] != "new_whale"][0]
        folds.loc[known, "Id"] = "someone_else"
    folds.to_csv(catalog_copy / "folds.csv", index=False)
    work = tmp_path / "work"
    result = run_script("train_fold.py", "0", "--data-dir", str(catalog_copy), "--work-dir", str(work),
                        "--set", "model.pretrained=false")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "folds.csv" in lines[0] and "make_folds.py" in lines[0]
    assert not work.exists()


def test_final_ensemble_refuses_a_truncated_score_matrix(catalog_copy, tmp_path):
    import numpy as np

    from matching.matrix import ScoreMatrix, save_matrix

    work = tmp_path / "work"
    matrix = ScoreMatrix(scores=np.full((2, 3), 0.5, np.float32), query=np.asarray(["a.jpg", "b.jpg"]),
                         gallery=np.asarray(["x.jpg", "y.jpg", "z.jpg"]))
    path = save_matrix(work / "scores" / "demo" / "test.npz", matrix)
    path.write_bytes(path.read_bytes()[:60])
    result = run_script("final_ensemble.py", "--data-dir", str(catalog_copy), "--work-dir", str(work))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "test.npz" in lines[0]
    assert not (work / "submission.csv").exists()


def test_an_unknown_family_is_one_line(catalog_copy, tmp_path):
    work = tmp_path / "work"
    result = run_script("train_fold.py", "0", "--data-dir", str(catalog_copy), "--work-dir", str(work),
                        "--set", "model.family=triplet")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.family" in lines[0]
    assert not work.exists()


def test_score_matrix_recomputes_the_features_after_a_new_boxes_csv(catalog_copy, tmp_path):
    import numpy as np
    import torch
    import yaml

    from data.checkpoint import save_checkpoint
    from matching.matrix import load_matrix
    from siamese.model import build_model

    model_cfg = {"name": "tiny", "branch": "test_efficientnet", "in_chans": 3, "pool": "max", "pretrained": False,
                 "weights": None, "head_hidden": 8}
    run_dir = tmp_path / "work" / "runs" / "tiny" / "fold0"
    stages = [{"size": 32, "blocks": [{"epochs": 1, "lr": 1e-3, "K": 1000, "batch": 8}]}]
    (run_dir / "32px").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"model": model_cfg, "train": {"stages": stages}}))
    torch.manual_seed(0)
    save_checkpoint(run_dir / "32px" / "best.pt", {"model": build_model(model_cfg).state_dict()})
    work = tmp_path / "work"
    args = ("--data-dir", str(catalog_copy), "--work-dir", str(work), "--keypoints", "off", "--device", "cpu")
    cache = work / "features" / "tiny" / "fold0" / "test.npz"

    def score() -> tuple[np.ndarray, np.ndarray, int]:
        result = run_script("score_matrix.py", *args)
        assert result.returncode == 0, result.stderr
        return load_matrix(work / "scores" / "tiny" / "test.npz").scores, np.load(cache)["features"], \
            cache.stat().st_mtime_ns

    first, feats, stamp = score()
    again, feats_again, stamp_again = score()
    assert stamp_again == stamp  # nothing changed: the cached features are reused
    np.testing.assert_array_equal(again, first)
    boxes = pd.read_csv(catalog_copy / "boxes.csv")
    boxes["x1"] = boxes["x0"] + 0.5 * (boxes["x1"] - boxes["x0"])  # every box now holds the left half of a fluke
    boxes.to_csv(catalog_copy / "boxes.csv", index=False)
    boxed, feats_boxed, stamp_boxed = score()
    assert stamp_boxed != stamp and not np.allclose(feats_boxed, feats)
    assert not np.allclose(boxed, first)
