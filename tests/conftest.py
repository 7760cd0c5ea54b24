"""Shared fixtures: a tiny synthetic catalog with folds and boxes, made once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from data.catalog import read_train_csv
from data.folds import make_folds
from data.io import write_csv
from data.synthetic import SynthConfig, write_catalog


@pytest.fixture(scope="session")
def tiny_catalog(tmp_path_factory) -> Path:
    """8 known individuals, ~40 train photos, 12 test photos at 128x80; folds.csv (2 folds) and boxes.csv."""
    out = tmp_path_factory.mktemp("tiny") / "catalog"
    write_catalog(out, SynthConfig(seed=1, individuals=8, mean_photos=4.0, max_photos=8, test_photos=12,
                                   width=128, height=80), progress=False)
    shutil.copy(out / "truth_boxes.csv", out / "boxes.csv")
    write_csv(make_folds(read_train_csv(out / "train.csv"), n_folds=2, seed=0), out / "folds.csv")
    return out
