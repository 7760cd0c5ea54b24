"""Pseudo-labels: threshold precision on a hand-made out-of-fold matrix, the selection, and the extended catalog."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.catalog import load_catalog, read_folds, read_train_csv
from matching.matrix import ScoreMatrix, save_matrix
from matching.ranking.pseudo import best_whales, choose_threshold, pseudo_labels, threshold_precision

REPO = Path(__file__).resolve().parents[1]
LABELS = {"g1": "a", "g2": "a", "g3": "b", "q1": "a", "q2": "b", "q3": "new_whale", "q4": "b"}


def oof_matrix() -> ScoreMatrix:
    scores = np.array([[0.9, 0.2, 0.1],    # q1 (a): best a 0.9, right
                       [0.3, 0.8, 0.7],    # q2 (b): best a 0.8, wrong
                       [0.1, 0.2, 0.6],    # q3 (new_whale): best b 0.6, wrong
                       [0.1, 0.2, 0.95]],  # q4 (b): best b 0.95, right
                      dtype=np.float32)
    return ScoreMatrix(scores, np.array(["q1", "q2", "q3", "q4"]), np.array(["g1", "g2", "g3"]))


def test_threshold_precision_on_a_hand_made_case():
    table = threshold_precision(oof_matrix(), LABELS, np.array([0.5, 0.7, 0.85, 0.92, 0.99]))
    assert table["selected"].tolist() == [4, 3, 2, 1, 0]
    assert table["correct"].tolist() == [2, 2, 2, 1, 0]
    np.testing.assert_allclose(table["precision"][:4], [0.5, 2 / 3, 1.0, 1.0])
    assert np.isnan(table["precision"].iloc[4])
    assert choose_threshold(table, 0.9) == 0.85
    assert choose_threshold(table, 0.6) == 0.7
    assert choose_threshold(table[table["threshold"] < 0.8], 0.9) is None


def test_pseudo_labels_keep_test_photos_above_the_threshold_best_first():
    test = ScoreMatrix(np.array([[0.5, 0.95, 0.1], [0.2, 0.1, 0.3], [0.1, 0.1, 0.99]], dtype=np.float32),
                       np.array(["t1", "t2", "t3"]), np.array(["g1", "g2", "g3"]))
    out = pseudo_labels(test, LABELS, 0.9)
    assert out["Image"].tolist() == ["t3", "t1"] and out["Id"].tolist() == ["b", "a"]
    assert best_whales(test, LABELS)["Id"].tolist() == ["a", "b", "b"]


def test_script_writes_an_extended_catalog(tiny_catalog, tmp_path):
    catalog = load_catalog(tiny_catalog)
    known = catalog.train[catalog.train["Id"] != "new_whale"]
    gallery = known["Image"].to_numpy(dtype=str)
    whales = known["Id"].to_numpy(dtype=str)
    tests = np.asarray(catalog.test_images, dtype=str)
    scores = np.full((len(tests), len(gallery)), 0.1, dtype=np.float32)
    scores[0, 0], scores[1, 3] = 0.97, 0.96  # two confident test photos
    save_matrix(tmp_path / "test.npz", ScoreMatrix(scores, tests, gallery))
    oof_q = gallery[:4]  # out-of-fold rows: each photo's own whale scores high on another photo of it
    oof = np.full((4, len(gallery)), 0.1, dtype=np.float32)
    for i, q in enumerate(oof_q):
        mates = np.flatnonzero((whales == whales[i]) & (gallery != q))
        oof[i, mates[0] if len(mates) else (i + 1) % len(gallery)] = 0.98
    save_matrix(tmp_path / "oof.npz", ScoreMatrix(oof, oof_q, gallery))
    out = tmp_path / "pseudo"
    cmd = [sys.executable, str(REPO / "scripts" / "pseudo_labels.py"), "--data-dir", str(tiny_catalog),
           "--work-dir", str(tmp_path), "--matrix", str(tmp_path / "test.npz"), "--oof", str(tmp_path / "oof.npz"),
           "--threshold", "0.9", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    train = read_train_csv(out / "train.csv")
    original = read_train_csv(tiny_catalog / "train.csv")
    assert len(train) == len(original) + 2
    added = train.iloc[len(original):]
    assert added["Image"].tolist() == [tests[0], tests[1]]
    assert added["Id"].tolist() == [whales[0], whales[3]]
    extended = load_catalog(out)  # every listed photo is there, test/ too
    assert extended.test_images == catalog.test_images
    folds = read_folds(out / "folds.csv")
    assert folds.set_index("Image").loc[list(added["Image"]), "fold"].tolist() == [-1, -1]
    assert pd.read_csv(out / "pseudo.csv")["score"].min() > 0.9
    assert (out / "threshold_precision.csv").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.strip().count("\n") == 0 and "--force" in again.stderr


@pytest.mark.parametrize("flag", [["--precision", "1.5"]])
def test_script_refuses_bad_settings_in_one_line(tiny_catalog, tmp_path, flag):
    cmd = [sys.executable, str(REPO / "scripts" / "pseudo_labels.py"), "--data-dir", str(tiny_catalog),
           "--work-dir", str(tmp_path), *flag]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error:") and done.stderr.strip().count("\n") == 0
